//! The keys of the kernel maps userspace fills, built from what userspace knows about a socket.

use probe_common::{ListenerKey, SocketTuple};

use crate::track::{Endpoints, address::to_mapped};

/// The key under which the kernel program looks this connection up at its next transition.
pub fn socket_tuple(endpoints: &Endpoints) -> SocketTuple {
    SocketTuple {
        saddr: to_mapped(endpoints.local.ip()),
        daddr: to_mapped(endpoints.remote.ip()),
        sport: endpoints.local.port(),
        dport: endpoints.remote.port(),
        _pad: [0; 4],
    }
}

/// The key under which the kernel program finds this listener's owner for what it accepts.
pub fn listener_key(endpoints: &Endpoints) -> ListenerKey {
    ListenerKey {
        addr: to_mapped(endpoints.local.ip()),
        port: endpoints.local.port(),
        _pad: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_tracepoint_address_form() {
        let tuple = socket_tuple(&Endpoints::parse("127.0.0.1:40000", "10.0.0.2:80"));
        assert_eq!(tuple.saddr[10..], [0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!((tuple.sport, tuple.dport), (40000, 80));
        let any = Endpoints::parse("0.0.0.0:8080", "0.0.0.0:0");
        assert_eq!(listener_key(&any).addr[10..], [0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(listener_key(&any).port, 8080);
    }
}
