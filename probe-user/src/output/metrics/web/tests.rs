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
    error_of(load(yaml))
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

/// A file that would leave the endpoint open (no TLS, no users) is refused, as the README
/// promises, rather than served as plain, unauthenticated HTTP.
#[test]
fn a_file_that_protects_nothing_is_refused() {
    for yaml in ["", "\n", "basic_auth_users: {}\n", "basic_auth_users:\n"] {
        let message = error(yaml);
        assert!(message.contains("neither TLS"), "{yaml:?}: {message}");
    }
    let message = WebConfig::load(Path::new("/dev/null"))
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("regular file"), "{message}");
}

/// Users a client cannot log in as, and hashes that cannot be checked in a scraper's time.
#[test]
fn user_names_and_hash_costs_no_scraper_can_use_are_refused() {
    let at_cost = |cost: &str| hash("x").replacen("$04$", &format!("${cost}$"), 1);
    for (yaml, expected) in [
        (
            format!("basic_auth_users:\n  \"a:b\": {}\n", hash("x")),
            "no colon",
        ),
        (
            format!("basic_auth_users:\n  \"\": {}\n", hash("x")),
            "not empty",
        ),
        (
            format!("basic_auth_users:\n  a: \"{}\"\n", at_cost("31")),
            "bcrypt cost 31",
        ),
        (
            format!("basic_auth_users:\n  a: \"{}\"\n", at_cost("15")),
            "bcrypt cost 15",
        ),
        (
            format!("basic_auth_users:\n  a: \"{}\"\n", at_cost("03")),
            "bcrypt cost 3",
        ),
    ] {
        let message = error(&yaml);
        assert!(message.contains(expected), "{yaml:?}: {message}");
    }
    assert!(load(&format!("basic_auth_users:\n  a: \"{}\"\n", at_cost("14"))).is_ok());
}

/// TLS 1.0 and 1.1 are not spoken: a minimum of them is said, not raised silently to 1.2.
#[test]
fn old_tls_versions_are_refused() {
    for version in ["TLS10", "TLS11"] {
        let message = error(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: {version}\n"
        ));
        assert!(
            message.contains("use TLS12 or TLS13"),
            "{version}: {message}"
        );
    }
}

/// Every file the configuration names is read as a regular file of bounded size: a device
/// (`/dev/zero` never ends), a FIFO (opening it would wait for a writer forever) and a huge
/// file are errors at once.
#[test]
fn the_files_it_names_are_regular_and_bounded() {
    let (dir, file) = config("");
    let fifo = dir.path().join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let large = dir.path().join("large.crt");
    fs::write(&large, vec![b'#'; (MAX_CONFIG_FILE_BYTES + 1) as usize]).unwrap();
    for named in [Path::new("/dev/zero"), fifo.as_path(), large.as_path()] {
        // As the configuration file itself.
        let message = WebConfig::load(named).err().unwrap().to_string();
        assert!(
            message.contains("regular file of at most 1 MiB"),
            "{named:?}: {message}"
        );
        // As its certificate, key, and client CA.
        for field in ["cert_file", "key_file", "client_ca_file"] {
            let mut yaml = String::from("tls_server_config:\n");
            for (key, default) in [("cert_file", "server.crt"), ("key_file", "server.key")] {
                let value = if key == field {
                    named.to_str().unwrap()
                } else {
                    default
                };
                yaml.push_str(&format!("  {key}: {value}\n"));
            }
            if field == "client_ca_file" {
                yaml.push_str(&format!(
                    "  client_ca_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n",
                    named.display()
                ));
            }
            fs::write(&file, &yaml).unwrap();
            let message = error_of(WebConfig::load(&file));
            assert!(
                message.contains("regular file of at most 1 MiB"),
                "{yaml}: {message}"
            );
        }
    }
}

/// Each error is said once: a wrapped error is not printed again as its own cause.
#[test]
fn an_error_is_said_once() {
    let message = error("tls_server_config:\n  cert_file: server.crt\n");
    assert_eq!(
        message.matches("needs a certificate").count(),
        1,
        "{message}"
    );
}

fn error_of(result: Result<WebConfig, WebConfigError>) -> String {
    let error = result.err().expect("loaded");
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
