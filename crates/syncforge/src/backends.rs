//! Building a backend from a configuration chosen at run time.

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
    /// The backend's name, as its [`StorageBackend::name`] says it:
    /// `"memory"` or `"filesystem"`.
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
/// backend was not compiled in, with [`Error::InvalidConfig`] naming the
/// option when a setting cannot work (an empty directory path, a directory
/// that cannot be created or written), and with the backend's own error when
/// it cannot be opened.
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
        BackendConfig::Filesystem { directory } => {
            if directory.as_os_str().is_empty() {
                return Err(Error::InvalidConfig {
                    option: "directory",
                    reason: "the filesystem backend needs a directory; the path is empty"
                        .to_owned(),
                });
            }
            let store = syncforge_backend_fs::FsBackend::open(directory)
                .await
                .map_err(|error| match error {
                    Error::Storage { message, .. } => Error::InvalidConfig {
                        option: "directory",
                        reason: format!(
                            "{} cannot be used as a store: {message}",
                            directory.display()
                        ),
                    },
                    other => other,
                })?;
            Ok(Arc::new(store))
        }
        #[allow(unreachable_patterns)] // reachable exactly when a feature is off
        other => Err(Error::FeatureDisabled {
            backend: other.name().to_owned(),
            feature: other.feature(),
        }),
    }
}
