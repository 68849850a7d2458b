//! The metrics endpoint's web configuration file, in the format Prometheus exporters share
//! (the exporter-toolkit's `web-config.yml`): TLS (`tls_server_config`) and basic auth
//! (`basic_auth_users`, bcrypt hashes). Read once at startup, before probe drops its
//! privileges; a file probe cannot honour fully is an error, never a silently open endpoint.

mod auth;
mod tls;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use crate::process::binary::{LastLink, read_regular};

pub use auth::{BasicAuth, Verdict};

/// What the file says, as the exporter-toolkit names it. Unknown keys are errors (a misspelt
/// key must not leave the endpoint open).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<tls::TlsServerConfig>,
    /// User name -> bcrypt hash of the password.
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// HTTP/2 and response headers: not supported by probe's endpoint.
    http_server_config: Option<yaml_serde::Value>,
}

/// The metrics endpoint's protection, ready to serve with.
#[derive(Clone)]
pub struct WebConfig {
    /// TLS, when the file configures it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic auth, when the file lists users.
    pub users: Option<Arc<BasicAuth>>,
}

/// What is wrong with a web configuration file; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error(
        "cannot read the web configuration file {path} (a regular file of at most 1 MiB): \
         check the path and its permissions"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the web configuration file {path} is not valid (the exporter-toolkit format: \
         tls_server_config, basic_auth_users): fix it as the error says"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{what} in {path}: probe does not support it; remove it from the file")]
    Unsupported { path: PathBuf, what: String },
    #[error(
        "the password hash of user {user:?} is not a bcrypt hash: make one with \
         `htpasswd -nBC 10 {user}` (the part after the colon)"
    )]
    BadHash {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
    #[error(
        "user name {user:?} in basic_auth_users cannot log in (basic auth sends `user:password`): \
         use a name that is not empty and has no colon"
    )]
    BadUser { user: String },
    #[error(
        "the password hash of user {user:?} has bcrypt cost {cost}: use a cost from {min} to \
         {max} (`htpasswd -nBC 10 {user}`); past {max}, every check makes scrapes wait seconds \
         to days",
        min = auth::MIN_COST,
        max = auth::MAX_COST
    )]
    HashCost { user: String, cost: u32 },
    #[error(
        "the web configuration file {path} configures neither TLS (tls_server_config) nor \
         users (basic_auth_users): it would leave the endpoint open; configure one, or leave \
         out --metrics-web-config"
    )]
    Empty { path: PathBuf },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// The largest web configuration, certificate or key file read: real ones are a few KiB, and
/// a path the user mistyped (`/dev/zero`, a log file) must not be read without end.
pub(crate) const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// The text of a file the configuration names: a regular file (never a FIFO, where open would
/// wait for a writer, nor a device), at most [`MAX_CONFIG_FILE_BYTES`].
pub(crate) fn read_config_file(path: &Path) -> std::io::Result<Vec<u8>> {
    read_regular(path, LastLink::Follow, MAX_CONFIG_FILE_BYTES)
}

impl WebConfig {
    /// Reads and checks the file at `path`: certificates and keys are loaded (paths relative
    /// to the file's directory, as exporters resolve them) and every password hash is parsed.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = read_config_file(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // An empty document says nothing: no TLS and no users (refused below).
        let file: WebConfigFile = if text.iter().all(u8::is_ascii_whitespace) {
            WebConfigFile::default()
        } else {
            yaml_serde::from_slice(&text).map_err(|source| WebConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?
        };
        if file.http_server_config.is_some() {
            return Err(WebConfigError::Unsupported {
                path: path.to_path_buf(),
                what: "http_server_config (HTTP/2, response headers)".into(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .map(|section| section.build(base, path))
            .transpose()?
            .map(Arc::new);
        let users = file
            .basic_auth_users
            .filter(|users| !users.is_empty())
            .map(BasicAuth::new)
            .transpose()?
            .map(Arc::new);
        if tls.is_none() && users.is_none() {
            return Err(WebConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(WebConfig { tls, users })
    }

    /// The URL scheme clients use.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

#[cfg(test)]
mod tests;
