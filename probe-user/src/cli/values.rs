//! Parsers for the values of the command line's options: each refusal says what would be
//! accepted.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use probe_common::TcpState;

use crate::track::Diagnosis;

pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither an address nor a network like 10.0.0.0/8"))
}

pub fn parse_state(text: &str) -> Result<TcpState, String> {
    let wanted = text
        .trim_start_matches("TCP_")
        .to_ascii_uppercase()
        .replace('-', "_");
    TcpState::ALL
        .into_iter()
        .find(|state| state.name() == wanted)
        .ok_or_else(|| {
            let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
            format!("`{text}` is not a TCP state; one of {}", names.join(", "))
        })
}

pub fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') {
        return Err(
            "a process name as `ps -o comm` shows it (no path), e.g. `--comm nginx`".into(),
        );
    }
    // The kernel keeps the first 15 bytes of a name: match what it keeps.
    let mut end = text.len().min(15);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(text[..end].to_string())
}

pub fn parse_pid(text: &str) -> Result<u32, String> {
    match text.parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as u32),
        Ok(_) => Err("a pid is a positive number (see `pgrep NAME`)".into()),
        Err(_) => Err(format!("`{text}` is not a pid (a positive number)")),
    }
}

/// The longest duration probe takes: longer ones would only overflow its clock arithmetic.
pub const LONGEST: Duration = Duration::from_secs(3650 * 86_400);

pub fn parse_threshold(text: &str) -> Result<Duration, String> {
    let too_long = || {
        format!(
            "`{text}` is too long: at most 3650d (ten years); leave --duration out to run until \
             Ctrl-C"
        )
    };
    let duration = humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        e => format!("`{text}` is not a duration ({e}); try 500ms, 5s, 2m or 1h"),
    })?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    if duration > LONGEST {
        return Err(too_long());
    }
    Ok(duration)
}

pub fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err("the ring buffer size is a power of two from 4 to 1048576 KiB".into());
    }
    Ok(kib)
}

/// `FIN_WAIT2=2m`, `syn-sent=5s`, `ACCEPT_QUEUE_FULL=off`.
pub fn parse_stuck_after(text: &str) -> Result<(Diagnosis, Option<Duration>), String> {
    let kinds: Vec<&str> = Diagnosis::ALL.iter().map(|kind| kind.key()).collect();
    let (kind, threshold) = text.split_once('=').ok_or_else(|| {
        format!(
            "`{text}` is not KIND=DURATION, e.g. SYN_SENT=5s; KIND is one of {}",
            kinds.join(", ")
        )
    })?;
    let key = kind
        .trim_start_matches("TCP_")
        .to_ascii_uppercase()
        .replace('-', "_");
    let kind = Diagnosis::from_key(&key).ok_or_else(|| {
        format!(
            "`{kind}` is not a kind of stuck connection; one of {}",
            kinds.join(", ")
        )
    })?;
    let threshold = match threshold {
        "off" => None,
        duration => Some(parse_threshold(duration)?),
    };
    Ok((kind, threshold))
}
