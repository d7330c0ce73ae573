//! The root keystore shared by the bootstrap nodes of one database:
//! adopted from the database, or published to it.

use std::path::Path;
use tracing::info;

use agentmesh_node::{
    crypto::keystore::{Keystore, KeystoreError, KEYSTORE_FILE},
    Passphrase,
};

use super::{OpenError, Store};

/// Key in `meta` of the root keystore (encrypted) shared by the bootstrap
/// nodes of one database.
const SHARED_ROOT_KEY: &[u8] = b"root_keystore";

/// Writes the database's root keystore to `root_dir` when this node has
/// none yet, so a second bootstrap node joins with the same root.
pub(super) fn adopt_shared_root(store: &Store, root_dir: &Path) -> Result<(), OpenError> {
    let path = root_dir.join(KEYSTORE_FILE);
    if path.exists() {
        return Ok(());
    }
    if let Some(bytes) = store.meta.get(SHARED_ROOT_KEY)? {
        write_keystore(&path, &bytes)?;
        info!(path = %path.display(), "adopted the registry root key of the shared database");
    }
    Ok(())
}

/// Stores this node's root keystore in the shared database when it holds
/// none; a node whose root differs from the database's adopts the
/// database's if it has just created its own, and refuses to start if not.
pub(super) fn publish_root(
    store: &Store,
    root_dir: &Path,
    root: Keystore,
    created: bool,
    pass: &Passphrase,
) -> Result<Keystore, OpenError> {
    let path = root_dir.join(KEYSTORE_FILE);
    let local = std::fs::read(&path).map_err(|source| KeystoreError::Io {
        path: path.clone(),
        source,
    })?;
    store
        .meta
        .compare_and_swap(SHARED_ROOT_KEY, None, Some(&local))?;
    let shared = store.meta.get(SHARED_ROOT_KEY)?.unwrap_or_default();
    if shared == local {
        return Ok(root);
    }
    let theirs = Keystore::decrypt(&shared, pass)?;
    if theirs.identity().amid() == root.identity().amid() {
        return Ok(root);
    }
    if !created {
        return Err(OpenError::RootMismatch(path));
    }
    // Another node created the shared root a moment before this one.
    write_keystore(&path, &shared)?;
    info!(root = %theirs.identity().amid(), "adopted the registry root key of the shared database");
    Ok(theirs)
}

/// Writes an encrypted keystore readable by its owner only.
fn write_keystore(path: &Path, bytes: &[u8]) -> Result<(), OpenError> {
    let io = |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}
