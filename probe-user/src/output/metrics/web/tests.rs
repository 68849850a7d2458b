//! The web configuration file: what loads, and a clear error for everything else.

use std::{fs, path::Path};

use super::*;

/// A self-signed certificate and its key, in PEM.
fn certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A directory with `web.yml` holding `yaml`, and the certificate as `server.crt` and
/// `server.key` beside it.
fn config(yaml: &str) -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let (cert, key) = certificate();
    fs::write(dir.path().join("server.crt"), cert).unwrap();
    fs::write(dir.path().join("server.key"), key).unwrap();
    let file = dir.path().join("web.yml");
    fs::write(&file, yaml).unwrap();
    (dir, file)
}

/// A bcrypt hash of `password` at the lowest cost (fast tests).
fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

fn load(yaml: &str) -> Result<WebConfig, WebConfigError> {
    let (_dir, file) = config(yaml);
    WebConfig::load(&file)
}

fn error(yaml: &str) -> String {
    match load(yaml) {
        Ok(_) => panic!("{yaml} loaded"),
        Err(error) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system's temporary one, removed when dropped.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "probe-web-config-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn tls_and_users_load_with_paths_relative_to_the_file() {
    let yaml = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         min_version: TLS13\nbasic_auth_users:\n  prometheus: {}\n",
        hash("secret")
    );
    let web = load(&yaml).unwrap();
    assert_eq!(web.scheme(), "https");
    assert!(web.users.is_some());
    let tls = web.tls.unwrap();
    assert_eq!(tls.alpn_protocols, [b"http/1.1".to_vec()]);
}

#[test]
fn basic_auth_alone_is_plain_http() {
    let web = load(&format!("basic_auth_users:\n  a: {}\n", hash("x"))).unwrap();
    assert_eq!(web.scheme(), "http");
    assert!(web.tls.is_none() && web.users.is_some());
}

#[test]
fn every_mistake_is_a_clear_error() {
    let cases = [
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "not a bcrypt hash",
        ),
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "htpasswd -nBC 10 alice",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n",
            "needs a certificate",
        ),
        (
            "tls_server_confg:\n  cert_file: server.crt\n",
            "unknown field `tls_server_confg`",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
            "missing.crt",
        ),
        (
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
            "cannot read a PEM certificate",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
            "cannot read a PEM private key",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAnyClientCert\n",
            "probe supports NoClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS14\n",
            "use TLS12 or TLS13",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS13\n  max_version: TLS12\n",
            "TLS13 above TLS12",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "cipher_suites",
        ),
        (
            "http_server_config:\n  http2: false\n",
            "http_server_config",
        ),
        ("- not\n- a map\n", "not valid"),
    ];
    for (yaml, expected) in cases {
        let message = error(yaml);
        assert!(message.contains(expected), "{yaml:?}: {message}");
    }
    let missing = WebConfig::load(Path::new("/nonexistent/web.yml"))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("check the path"));
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let (dir, file) =
        config("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n");
    let (_, other_key) = certificate();
    fs::write(dir.path().join("other.key"), other_key).unwrap();
    let message = WebConfig::load(&file).err().unwrap().to_string();
    assert!(message.contains("do not go together"), "{message}");
}

#[test]
fn basic_auth_lets_in_the_right_password_only() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = BasicAuth::new([("alice".to_string(), hash("s3cret:x"))].into()).unwrap();
    let header = |credentials: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    runtime.block_on(async {
        for (authorization, expected) in [
            (Some(header("alice:s3cret:x")), Verdict::Allowed),
            // Remembered: the same again.
            (Some(header("alice:s3cret:x")), Verdict::Allowed),
            (Some(header("alice:wrong")), Verdict::Denied),
            (Some(header("bob:s3cret:x")), Verdict::Denied),
            (Some(header("alice")), Verdict::Denied),
            (Some("Bearer abc".to_string()), Verdict::Denied),
            (Some("Basic !!!".to_string()), Verdict::Denied),
            (None, Verdict::Denied),
        ] {
            let verdict = users
                .check(authorization.as_deref().map(str::as_bytes))
                .await;
            assert_eq!(verdict, expected, "{authorization:?}");
        }
    });
}
