//! Building a backend by name, as the original's `backend` option does.

use std::path::PathBuf;
use std::sync::Arc;

use syncforge_core::{Error, Result, StorageBackend};

/// A backend chosen by name, with its settings: what [`create_backend`] builds.
///
/// Every variant exists whatever features are enabled, so that asking for a
/// backend whose feature is off gives a clear error instead of a compile error
/// somewhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// The in-process store (feature `memory`, on by default).
    Memory,
    /// A directory per collection, one JSON file per record (feature `fs`).
    Filesystem {
        /// The store's root directory; created when missing.
        directory: PathBuf,
    },
}

impl BackendConfig {
    /// The original's name of this backend: `"memory"` or `"filesystem"`.
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Memory => "memory",
            BackendConfig::Filesystem { .. } => "filesystem",
        }
    }

    /// The cargo feature that provides this backend.
    pub fn feature(&self) -> &'static str {
        match self {
            BackendConfig::Memory => "memory",
            BackendConfig::Filesystem { .. } => "fs",
        }
    }
}

/// Builds the backend described by `config`.
///
/// Fails with [`Error::FeatureDisabled`] naming the cargo feature when that
/// backend was not compiled in, and with the backend's own error when it cannot
/// be opened.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// use syncforge::{create_backend, BackendConfig};
/// let backend = create_backend(&BackendConfig::Memory).await?;
/// assert_eq!(backend.name(), "memory");
/// # Ok(())
/// # }
/// ```
pub async fn create_backend(config: &BackendConfig) -> Result<Arc<dyn StorageBackend>> {
    match config {
        #[cfg(feature = "memory")]
        BackendConfig::Memory => Ok(Arc::new(syncforge_backend_memory::MemoryBackend::new())),
        #[cfg(feature = "fs")]
        BackendConfig::Filesystem { directory } => Ok(Arc::new(
            syncforge_backend_fs::FsBackend::open(directory).await?,
        )),
        #[allow(unreachable_patterns)] // reachable exactly when a feature is off
        other => Err(Error::FeatureDisabled {
            backend: other.name().to_owned(),
            feature: other.feature(),
        }),
    }
}
