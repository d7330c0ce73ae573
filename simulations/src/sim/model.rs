//! The world's rules: regions and their round trips, NAT kinds and which
//! pairs a hole punch connects, and the churn distributions.

use rand::{Rng, RngCore};

/// Regions, in the order of [`RTT_MS`].
pub const REGIONS: &[&str] = &[
    "us-east",
    "us-west",
    "europe-west",
    "japan-east",
    "asia-southeast",
    "australia-east",
    "brazil-south",
];

/// Median round trips between regions, ms: Azure's published inter-region
/// P50 latencies (East US, West US 2, West Europe, Japan East, Southeast
/// Asia, Australia East, Brazil South; 30 days to 2025-06-29), both
/// directions averaged; 10 ms within a region.
pub const RTT_MS: [[u32; 7]; 7] = [
    [10, 68, 85, 164, 223, 201, 118],
    [68, 10, 150, 100, 163, 162, 178],
    [85, 150, 10, 236, 162, 251, 188],
    [164, 100, 236, 10, 72, 104, 271],
    [223, 163, 162, 72, 10, 94, 336],
    [201, 162, 251, 104, 94, 10, 305],
    [118, 178, 188, 271, 336, 305, 10],
];

/// Where an agent stands on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Nat {
    /// A public address.
    Public,
    /// Full-cone NAT: reachable once mapped.
    FullCone,
    /// Address-restricted cone.
    AddressRestricted,
    /// Port-restricted cone.
    PortRestricted,
    /// Symmetric: a new port per destination.
    Symmetric,
}

impl Nat {
    /// Every kind, in report order.
    pub const ALL: [Nat; 5] = [
        Nat::Public,
        Nat::FullCone,
        Nat::AddressRestricted,
        Nat::PortRestricted,
        Nat::Symmetric,
    ];

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Nat::Public => "public",
            Nat::FullCone => "full-cone",
            Nat::AddressRestricted => "address-restricted",
            Nat::PortRestricted => "port-restricted",
            Nat::Symmetric => "symmetric",
        }
    }

    /// Whether AutoNAT finds the agent reachable, so it serves the DHT
    /// (the node runs the DHT in server mode only then). An
    /// address-restricted NAT is reported reachable: AutoNAT v1 dials back
    /// from the address it was asked from (BENCHMARKS §6).
    pub fn dht_server(self) -> bool {
        matches!(self, Nat::Public | Nat::FullCone | Nat::AddressRestricted)
    }

    /// Whether a dial from anyone reaches the agent at once.
    pub fn dialable(self) -> bool {
        matches!(self, Nat::Public | Nat::FullCone)
    }

    /// Whether the agent needs a relay reservation to be reached.
    pub fn needs_relay(self) -> bool {
        !self.dialable()
    }
}

/// Whether a hole punch between `a` and `b` goes direct: the NAT lab's
/// table (BENCHMARKS §6, QUIC): every pair with at most one symmetric NAT
/// goes direct, except symmetric with port-restricted.
pub fn hole_punch_works(a: Nat, b: Nat) -> bool {
    use Nat::*;
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

/// A uniform draw in [0, 1).
pub(crate) fn unit(rng: &mut impl RngCore) -> f64 {
    rng.random::<f64>()
}

/// A Weibull draw (inverse transform).
pub(crate) fn weibull(rng: &mut impl RngCore, shape: f64, scale: f64) -> f64 {
    let u = 1.0 - unit(rng);
    scale * (-u.ln()).powf(1.0 / shape)
}

/// An exponential draw with the given mean.
pub(crate) fn exponential(rng: &mut impl RngCore, mean: f64) -> f64 {
    let u = 1.0 - unit(rng);
    -u.ln() * mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_rtt_matrix_is_symmetric() {
        for (i, row) in RTT_MS.iter().enumerate() {
            for (j, rtt) in row.iter().enumerate() {
                assert_eq!(*rtt, RTT_MS[j][i]);
            }
        }
    }

    #[test]
    fn draws_have_the_expected_means() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 200_000;
        let mean_exp: f64 = (0..n).map(|_| exponential(&mut rng, 2.0)).sum::<f64>() / n as f64;
        assert!((mean_exp - 2.0).abs() < 0.05, "{mean_exp}");
        // Weibull(k = 1) is exponential with mean = scale.
        let mean_w: f64 = (0..n).map(|_| weibull(&mut rng, 1.0, 3.0)).sum::<f64>() / n as f64;
        assert!((mean_w - 3.0).abs() < 0.05, "{mean_w}");
        // Median of Weibull(k, λ) is λ (ln 2)^(1/k).
        let mut w: Vec<f64> = (0..n).map(|_| weibull(&mut rng, 0.61, 3.66)).collect();
        w.sort_by(f64::total_cmp);
        let expected = 3.66 * std::f64::consts::LN_2.powf(1.0 / 0.61);
        assert!(
            (w[n / 2] - expected).abs() / expected < 0.03,
            "{} vs {expected}",
            w[n / 2]
        );
    }

    #[test]
    fn hole_punch_table_matches_the_lab() {
        assert!(hole_punch_works(Nat::Symmetric, Nat::AddressRestricted));
        assert!(!hole_punch_works(Nat::PortRestricted, Nat::Symmetric));
        assert!(hole_punch_works(Nat::PortRestricted, Nat::PortRestricted));
    }
}
