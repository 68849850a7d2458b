//! What a connection speaks, for diagnoses in its own words: a PostgreSQL connection left in
//! CLOSE_WAIT is a connection never returned to its pool, not an HTTP response body never
//! closed. Known by the client library in the code that opened it where a frame names one
//! (`psycopg2/...`, `github.com/lib/pq.`, `redis.clients.jedis.`, `net/http.`), else by the
//! service's well-known port, else not at all (neutral words).

use super::{Origin, code_path::Frame, view::ConnectionView};

/// The protocol of a connection, as far as probe can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Postgres,
    Mysql,
    Redis,
    Memcached,
    MongoDb,
    Kafka,
    Grpc,
    Http,
    /// Nothing says: neutral words.
    Unknown,
}

/// Parts of frame names (function or file, lower case) that say which client library opened
/// the connection, databases first (their stacks may hold an HTTP word by chance; an HTTP
/// client's hold no database's).
const LIBRARIES: &[(&str, Protocol)] = &[
    ("psycopg", Protocol::Postgres),
    ("asyncpg", Protocol::Postgres),
    ("libpq", Protocol::Postgres),
    ("pqconnect", Protocol::Postgres),
    ("github.com/lib/pq", Protocol::Postgres),
    ("github.com/jackc/pgx", Protocol::Postgres),
    ("org.postgresql", Protocol::Postgres),
    ("npgsql", Protocol::Postgres),
    ("pymysql", Protocol::Mysql),
    ("mysqldb", Protocol::Mysql),
    ("go-sql-driver/mysql", Protocol::Mysql),
    ("com.mysql", Protocol::Mysql),
    ("mariadb", Protocol::Mysql),
    ("redis", Protocol::Redis),
    ("jedis", Protocol::Redis),
    ("lettuce", Protocol::Redis),
    ("memcache", Protocol::Memcached),
    ("pymongo", Protocol::MongoDb),
    ("mongodb", Protocol::MongoDb),
    ("kafka", Protocol::Kafka),
    ("sarama", Protocol::Kafka),
    ("grpc", Protocol::Grpc),
    ("net/http.", Protocol::Http),
    ("requests/", Protocol::Http),
    ("urllib3/", Protocol::Http),
    ("http/client", Protocol::Http),
    ("httpconnection", Protocol::Http),
    ("httpx/", Protocol::Http),
    ("aiohttp/", Protocol::Http),
    ("org.apache.hc.", Protocol::Http),
    ("java.net.http", Protocol::Http),
    ("okhttp", Protocol::Http),
    ("undici", Protocol::Http),
    ("curl_easy", Protocol::Http),
];

impl Protocol {
    /// What `connection` speaks: by the library in the code that opened it, else by the port
    /// of the service it is known by.
    pub fn of(connection: &ConnectionView) -> Protocol {
        Protocol::by_library(connection.origin())
            .or_else(|| Protocol::by_port(connection.known_by.port()))
            .unwrap_or(Protocol::Unknown)
    }

    /// The client library a frame of the code path names, if one does.
    fn by_library(origin: Origin<'_>) -> Option<Protocol> {
        let frames = origin
            .requested_at
            .into_iter()
            .chain(origin.opened_at)
            .flat_map(|path| path.frames.iter());
        let mut found = None;
        for frame in frames {
            let words = frame_words(frame);
            if let Some(&(_, protocol)) = LIBRARIES.iter().find(|(part, _)| words.contains(part)) {
                // A database's word outranks an HTTP one (the enum's order).
                found = Some(found.map_or(protocol, |other: Protocol| other.min(protocol)));
            }
        }
        found
    }

    /// The protocol of a well-known service port.
    pub fn by_port(port: u16) -> Option<Protocol> {
        Some(match port {
            5432 | 6432 => Protocol::Postgres,
            3306 => Protocol::Mysql,
            6379 => Protocol::Redis,
            11211 => Protocol::Memcached,
            27017 => Protocol::MongoDb,
            9092 => Protocol::Kafka,
            50051 => Protocol::Grpc,
            80 | 443 | 8080 | 8443 | 8000 => Protocol::Http,
            _ => return None,
        })
    }

    /// Its name, for a reader (`PostgreSQL`); `None` for [`Protocol::Unknown`].
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::Postgres => "PostgreSQL",
            Protocol::Mysql => "MySQL",
            Protocol::Redis => "Redis",
            Protocol::Memcached => "Memcached",
            Protocol::MongoDb => "MongoDB",
            Protocol::Kafka => "Kafka",
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
            Protocol::Unknown => return None,
        })
    }
}

/// A frame's function and file, lower case, for [`LIBRARIES`].
fn frame_words(frame: &Frame) -> String {
    let mut words = frame.function.to_lowercase();
    if let Some(file) = &frame.file {
        words.push(' ');
        words.push_str(&file.to_lowercase());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::code_path::{CodePath, FrameKind};

    fn path(frames: &[(&str, Option<&str>)]) -> CodePath {
        CodePath {
            frames: frames
                .iter()
                .map(|&(function, file)| Frame {
                    function: function.into(),
                    file: file.map(Into::into),
                    line: None,
                    address: 0,
                    kind: FrameKind::Library,
                })
                .collect(),
        }
    }

    fn by_library(frames: &[(&str, Option<&str>)]) -> Option<Protocol> {
        let opened = path(frames);
        Protocol::by_library(Origin {
            opened_at: Some(&opened),
            requested_at: None,
        })
    }

    #[test]
    fn the_client_library_in_the_code_path_says_what_the_connection_speaks() {
        assert_eq!(
            by_library(&[
                ("connect", Some("psycopg2/__init__.py")),
                ("do_query", Some("app.py"))
            ]),
            Some(Protocol::Postgres)
        );
        assert_eq!(
            by_library(&[("Connection.connect", Some("redis/connection.py"))]),
            Some(Protocol::Redis)
        );
        assert_eq!(
            by_library(&[("net/http.(*Transport).dial", None)]),
            Some(Protocol::Http)
        );
        assert_eq!(
            by_library(&[("create_connection", Some("urllib3/connection.py"))]),
            Some(Protocol::Http)
        );
        assert_eq!(by_library(&[("do_request", Some("leaky.c"))]), None);
    }

    #[test]
    fn a_well_known_port_says_it_where_no_library_does() {
        assert_eq!(Protocol::by_port(5432), Some(Protocol::Postgres));
        assert_eq!(Protocol::by_port(6379), Some(Protocol::Redis));
        assert_eq!(Protocol::by_port(80), Some(Protocol::Http));
        assert_eq!(Protocol::by_port(40123), None);
    }
}
