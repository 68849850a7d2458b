//! `tls_server_config`: the server certificate and key, the TLS versions, and client
//! certificates, as a rustls server configuration (ring as the crypto provider).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

/// The section as exporters write it. Certificates and keys come from files (`cert_file`,
/// `key_file`) or inline (`cert`, `key`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Known to exporters, not supported here: an error that says so rather than "unknown".
    cipher_suites: Option<yaml_serde::Value>,
    curve_preferences: Option<yaml_serde::Value>,
    client_allowed_sans: Option<yaml_serde::Value>,
}

/// What is wrong with the TLS section; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path} (a regular file of at most 1 MiB): check the path in \
         tls_server_config and its permissions"
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tls_server_config in {config} needs a certificate (cert_file or cert) and its key (key_file or key)"
    )]
    Incomplete { config: PathBuf },
    #[error(
        "cannot read a PEM certificate from {what}: give a PEM file holding the certificate chain, the server's first"
    )]
    Certificate {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "cannot read a PEM private key from {what}: give the server certificate's key, unencrypted, in PEM (PKCS#8, PKCS#1 or SEC1)"
    )]
    Key {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the certificate and key in {config} do not go together, or rustls refuses them: check that the key is the certificate's"
    )]
    Rejected {
        config: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "client_auth_type {value:?} in {config}: probe supports NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert"
    )]
    ClientAuth { config: PathBuf, value: String },
    #[error(
        "client_auth_type {value} in {config} needs client_ca_file, the CA that signs the clients' certificates"
    )]
    NoClientCa { config: PathBuf, value: String },
    #[error("cannot use the client CAs of {config}: check client_ca_file")]
    ClientCa {
        config: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("TLS version {value:?} in {config}: use TLS12 or TLS13 (probe speaks TLS 1.2 and 1.3)")]
    Version { config: PathBuf, value: String },
    #[error(
        "{what} in tls_server_config of {config}: probe does not support it (it uses rustls' defaults); remove it"
    )]
    Unsupported { config: PathBuf, what: &'static str },
}

/// TLS versions by exporter-toolkit name, oldest first. TLS 1.0 and 1.1 are not spoken: a
/// minimum of them is an error that says so, not silently raised to TLS 1.2.
fn version_rank(value: &str) -> Option<u8> {
    match value {
        "TLS12" => Some(2),
        "TLS13" => Some(3),
        _ => None,
    }
}

impl TlsServerConfig {
    /// Builds the rustls configuration; relative paths are relative to `base`; `config` is
    /// the file, for messages.
    pub fn build(self, base: &Path, config: &Path) -> Result<ServerConfig, TlsError> {
        let config = config.to_path_buf();
        for (present, what) in [
            (self.cipher_suites.is_some(), "cipher_suites"),
            (self.curve_preferences.is_some(), "curve_preferences"),
            (self.client_allowed_sans.is_some(), "client_allowed_sans"),
        ] {
            if present {
                return Err(TlsError::Unsupported { config, what });
            }
        }
        let resolve = |path: &Path| base.join(path);
        let certificates: Vec<CertificateDer<'static>> = match (&self.cert_file, &self.cert) {
            (Some(path), _) => read_certificates(&resolve(path))?,
            (None, Some(pem)) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|source| TlsError::Certificate {
                    what: "cert".into(),
                    source,
                })?,
            (None, None) => return Err(TlsError::Incomplete { config }),
        };
        let key = match (&self.key_file, &self.key) {
            (Some(path), _) => {
                let path = resolve(path);
                PrivateKeyDer::from_pem_slice(&read_file(&path)?).map_err(|source| {
                    TlsError::Key {
                        what: path.display().to_string(),
                        source,
                    }
                })?
            }
            (None, Some(pem)) => {
                PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Key {
                    what: "key".into(),
                    source,
                })?
            }
            (None, None) => return Err(TlsError::Incomplete { config }),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = self.versions(&config)?;
        let verifier = self.client_verifier(&config, base, &provider)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rejected {
                config: config.clone(),
                source,
            })?;
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(certificates, key)
            .map_err(|source| TlsError::Rejected { config, source })?;
        server.ignore_client_order = self.prefer_server_cipher_suites.unwrap_or(false);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(server)
    }

    fn versions(&self, config: &Path) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
        let rank = |value: &Option<String>, default: u8| match value {
            None => Ok(default),
            Some(value) => version_rank(value).ok_or_else(|| TlsError::Version {
                config: config.to_path_buf(),
                value: value.clone(),
            }),
        };
        let (min, max) = (rank(&self.min_version, 2)?, rank(&self.max_version, 3)?);
        let versions: Vec<_> = [(2, &TLS12), (3, &TLS13)]
            .into_iter()
            .filter(|(rank, _)| (min..=max).contains(rank))
            .map(|(_, version)| version)
            .collect();
        if versions.is_empty() {
            return Err(TlsError::Version {
                config: config.to_path_buf(),
                value: format!(
                    "{} above {}",
                    self.min_version.as_deref().unwrap_or("TLS12"),
                    self.max_version.as_deref().unwrap_or("TLS13")
                ),
            });
        }
        Ok(versions)
    }

    fn client_verifier(
        &self,
        config: &Path,
        base: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
        let value = self.client_auth_type.as_deref().unwrap_or("NoClientCert");
        let optional = match value {
            "NoClientCert" => return Ok(None),
            "VerifyClientCertIfGiven" => true,
            "RequireAndVerifyClientCert" => false,
            _ => {
                return Err(TlsError::ClientAuth {
                    config: config.to_path_buf(),
                    value: value.into(),
                });
            }
        };
        let Some(path) = &self.client_ca_file else {
            return Err(TlsError::NoClientCa {
                config: config.to_path_buf(),
                value: value.into(),
            });
        };
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(&base.join(path))? {
            // A certificate webpki cannot use as an anchor is reported by `build` below,
            // which fails when no root is left.
            let _ = roots.add(certificate);
        }
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
        if optional {
            builder = builder.allow_unauthenticated();
        }
        builder
            .build()
            .map(Some)
            .map_err(|source| TlsError::ClientCa {
                config: config.to_path_buf(),
                source,
            })
    }
}

/// A certificate or key file, read as the configuration file is (see
/// [`super::read_config_file`]).
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    super::read_config_file(path).map_err(|source| TlsError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |source| TlsError::Certificate {
        what: path.display().to_string(),
        source,
    };
    let certificates = CertificateDer::pem_slice_iter(&read_file(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    if certificates.is_empty() {
        return Err(error(rustls_pki_types::pem::Error::NoItemsFound));
    }
    Ok(certificates)
}
