//! # agentmesh-sim
//!
//! Runs AgentMesh networks for researchers and developers. Today:
//!
//! - [`devnet`]: a whole local network of real processes on loopback (one
//!   bootstrap, N agents), the quickest way to see AgentMesh work;
//! - [`process`]: the harness that starts those processes and waits on
//!   their JSON events, used by the devnet and the process tests;
//! - [`netns`]: network namespaces with NAT routers (nftables), for
//!   NAT traversal tests and `agentmesh-sim natlab`;
//! - [`delayline`]: latency added in user space to a host's packets;
//! - [`scale`]: many agents in one process, first contacts, sessions and
//!   offline delivery measured (`agentmesh-sim scale`);
//! - [`sim`]: 10 000 to 100 000 agents in virtual time, running the DHT's
//!   own engine, deterministic for a seed (`agentmesh-sim sim`);
//! - [`progress`]: how those long runs show progress (a bar on a terminal,
//!   lines in a log).
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod delayline;
pub mod devnet;
pub mod natlab;
pub mod netns;
pub mod process;
pub mod progress;
pub mod scale;
pub mod sim;
