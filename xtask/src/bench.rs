//! `cargo xtask bench`: what tracing costs the traced workload, measured side by side in one run.
//!
//! Configurations are interleaved round by round, and every run of a tracer is paired with a run
//! of the workload alone right next to it (before it in one round, after it in the next); each is
//! reported as its ratio to its pair (median and spread over the rounds): absolute times on a
//! shared 2-core machine are noise, and they drift within a minute; ratios of neighbouring runs
//! are what can be compared.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{build, cmd::tool_exists};

/// A tcpstates-style bpftrace script: every TCP transition, with the time spent in the old
/// state, printed (as bcc's and libbpf-tools' tcpstates do; it cannot filter by owner).
const BPFTRACE_TCPSTATES: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
    $sk = args->skaddr;
    $us = @last[$sk] ? (nsecs - @last[$sk]) / 1000 : 0;
    printf("%d %s %d %d %d %d %d\n", pid, comm, args->sport, args->dport, args->oldstate, args->newstate, $us);
    if (args->newstate == 7) { delete(@last[$sk]); } else { @last[$sk] = nsecs; }
}"#;

/// probe's arguments for the classic tracepoint program (the default is the BTF one).
const CLASSIC: &[&str] = &["--attach", "tracepoint"];

/// What is measured, round after round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// The workload alone.
    Baseline,
    /// probe tracing the workload (every transition to userspace, stacks on).
    Probe,
    /// The same without stack capture.
    ProbeNoStacks,
    /// probe tracing the workload with the classic tracepoint program.
    ProbeClassic,
    /// probe tracing an unrelated idle process: in-kernel filtering only.
    ProbeIdle,
    /// The same with the classic tracepoint program.
    ProbeIdleClassic,
    /// bpftrace with a tcpstates-style script.
    Bpftrace,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Baseline => "1. no tracer (baseline)",
            Config::Probe => "2. probe --pid WORKLOAD",
            Config::ProbeNoStacks => "2b. probe --pid WORKLOAD --no-stacks",
            Config::ProbeClassic => "2c. probe --pid WORKLOAD --attach tracepoint",
            Config::ProbeIdle => "3. probe --pid IDLE (unrelated)",
            Config::ProbeIdleClassic => "3b. probe --pid IDLE --attach tracepoint",
            Config::Bpftrace => "4. bpftrace tcpstates-style script",
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Connections per second of the workload.
    rate: f64,
    /// Transitions the tracer delivered (lines it printed).
    transitions: u64,
    /// Events the tracer reported lost.
    lost: u64,
    /// The tracer's CPU time.
    cpu_seconds: f64,
    /// The tracer's peak resident memory, KiB.
    peak_rss_kib: u64,
    /// Runs of the tracer's BPF programs, and the time they took (kernel.bpf_stats_enabled).
    program_runs: u64,
    program_ns: u64,
    /// The workload's wall time, seconds.
    seconds: f64,
    /// Connections per second of the workload alone in the run paired with this one.
    paired_rate: f64,
}

/// Runs the benchmark and writes BENCHMARKS.md.
pub fn bench(rounds: usize, connections: usize, concurrency: usize) -> Result<()> {
    let built = build::all()?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let bpftrace = tool_exists("bpftrace") || crate::toolchain::apt_install(&["bpftrace"]).is_ok();
    let bcc = bcc_tcpstates_works();
    let mut configs = vec![
        Config::Baseline,
        Config::Probe,
        Config::ProbeNoStacks,
        Config::ProbeClassic,
        Config::ProbeIdle,
        Config::ProbeIdleClassic,
    ];
    if bpftrace {
        configs.push(Config::Bpftrace);
    }

    let mut runs: Vec<(usize, Config, Run)> = Vec::new();
    let tracers: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|&config| config != Config::Baseline)
        .collect();
    for round in 0..rounds {
        // Rotate the order each round, so no configuration always runs first or last; the
        // workload alone runs next to each tracer, first in even rounds and last in odd ones.
        let mut order = tracers.clone();
        order.rotate_left(round % tracers.len());
        for config in order {
            let mut pair = [Config::Baseline, config];
            if round % 2 == 1 {
                pair.reverse();
            }
            let [first, second] = pair.map(|config| {
                measure(config, &built.probe, &xtask, connections, concurrency)
                    .with_context(|| format!("round {round}, {}", config.label()))
            });
            let (mut alone, mut traced) = if round % 2 == 0 {
                (first?, second?)
            } else {
                (second?, first?)
            };
            alone.paired_rate = alone.rate;
            traced.paired_rate = alone.rate;
            eprintln!(
                "xtask: round {} {:<45} {:>8.0} conn/s (alone: {:.0}), {} transitions, {} lost",
                round + 1,
                config.label(),
                traced.rate,
                alone.rate,
                traced.transitions,
                traced.lost
            );
            runs.push((round, Config::Baseline, alone));
            runs.push((round, config, traced));
        }
    }
    // The kernel programs' own time per run, in a round of its own: kernel.bpf_stats_enabled
    // adds two clock reads to every run of every program, which the rounds above must not pay.
    let stats = BpfStats::enable();
    let mut timed: Vec<(Config, Run)> = Vec::new();
    for &config in &tracers {
        let run = measure(config, &built.probe, &xtask, connections, concurrency)
            .with_context(|| format!("timing round, {}", config.label()))?;
        timed.push((config, run));
    }
    drop(stats);
    let memory = measure_memory(&built.probe, &xtask, 100_000)?;
    let measured = Measured {
        runs: &runs,
        timed: &timed,
        memory: &memory,
    };
    let report = report(measured, &configs, rounds, connections, concurrency, &bcc);
    println!("{report}");
    let path = build::workspace_root().join("BENCHMARKS.md");
    fs::write(&path, report).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

fn measure(
    config: Config,
    probe: &Path,
    xtask: &Path,
    connections: usize,
    concurrency: usize,
) -> Result<Run> {
    let workload = Worker::churn(xtask, connections, concurrency)?;
    let idle = Sleeper::start()?;
    let tracer = match config {
        Config::Baseline => None,
        Config::Probe => Some(Tracer::probe(probe, workload.pid(), &[])?),
        Config::ProbeNoStacks => Some(Tracer::probe(probe, workload.pid(), &["--no-stacks"])?),
        Config::ProbeClassic => Some(Tracer::probe(probe, workload.pid(), CLASSIC)?),
        Config::ProbeIdle => Some(Tracer::probe(probe, idle.pid(), &[])?),
        Config::ProbeIdleClassic => Some(Tracer::probe(probe, idle.pid(), CLASSIC)?),
        Config::Bpftrace => Some(Tracer::bpftrace()?),
    };
    let rate = workload.run_churn()?;
    let mut run = Run {
        rate,
        seconds: connections as f64 / rate,
        ..Run::default()
    };
    if let Some(tracer) = tracer {
        tracer.stop(&mut run)?;
    }
    Ok(run)
}

/// An idle process to trace, killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Result<Sleeper> {
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start an idle process")?;
        Ok(Sleeper(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An xtask child (the churn workload, a connection holder) that waits for `go` on stdin and
/// answers with a line on stdout.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    /// Starts `xtask ARGS`; `what` names it in errors.
    fn start(xtask: &Path, args: &[String], what: &str) -> Result<Worker> {
        let mut child = Command::new(xtask)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let lines = lines_of(child.stdout.take().context("no stdout")?);
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    /// The churn workload, held until [`Worker::run_churn`].
    fn churn(xtask: &Path, connections: usize, concurrency: usize) -> Result<Worker> {
        let args = [
            "churn".to_string(),
            "--connections".into(),
            connections.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
        ];
        Worker::start(xtask, &args, "the workload")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) -> Result<()> {
        writeln!(self.stdin, "go").context("cannot tell a worker to go")
    }

    /// Its answer, waiting at most five minutes.
    fn answer(&self, what: &str) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(300))
            .with_context(|| format!("{what} did not answer"))
    }

    /// Lets the churn workload go; returns its connections per second.
    fn run_churn(mut self) -> Result<f64> {
        self.go()?;
        let line = self.answer("the workload")?;
        self.child.wait()?;
        line.strip_prefix("rate ")
            .and_then(|rate| rate.trim().parse().ok())
            .with_context(|| format!("unexpected workload output: {line}"))
    }

    /// Closes its stdin (a holder then lets go of its connections) and waits for it.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin);
        self.child.wait()?;
        Ok(())
    }
}

/// A running tracer whose output lines are counted.
struct Tracer {
    child: Child,
    counted: mpsc::Receiver<(u64, u64)>,
    /// Events the tracer said it dropped (bpftrace, on stderr).
    dropped: Arc<AtomicU64>,
}

impl Tracer {
    fn probe(probe: &Path, pid: u32, extra: &[&str]) -> Result<Tracer> {
        let mut command = Command::new(probe);
        command
            .args(["--json", "--pid", &pid.to_string()])
            .args(extra);
        Tracer::start(command, "probe: tracing")
    }

    fn bpftrace() -> Result<Tracer> {
        let mut command = Command::new("bpftrace");
        command.args(["-e", BPFTRACE_TCPSTATES]);
        Tracer::start(command, "Attaching")
    }

    /// Starts `command` and waits until a line starting with `ready` appears on either output.
    fn start(mut command: Command, ready: &'static str) -> Result<Tracer> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (counted_tx, counted) = mpsc::channel();
        let ready_out = ready_tx.clone();
        thread::spawn(move || {
            // Count transition lines; the last line of probe's JSON is its summary.
            let (mut transitions, mut lost) = (0, 0);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with(ready) {
                    let _ = ready_out.send(());
                } else if line.starts_with("{\"type\":\"summary\"") {
                    lost = summary_lost(&line);
                } else if let Some(dropped) = dropped_count(&line) {
                    lost += dropped;
                } else {
                    transitions += 1;
                }
            }
            let _ = counted_tx.send((transitions, lost));
        });
        // bpftrace says what its perf buffer dropped, `Lost 123 events` (0.17: on stdout).
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_by_tracer = Arc::clone(&dropped);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with(ready) {
                    let _ = ready_tx.send(());
                }
                if let Some(count) = dropped_count(&line) {
                    dropped_by_tracer.fetch_add(count, Ordering::Relaxed);
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            bail!("{command:?} did not start");
        }
        Ok(Tracer {
            child,
            counted,
            dropped,
        })
    }

    /// Stops it; returns (transitions, lost, CPU seconds, peak RSS KiB).
    /// Stops the tracer, noting what it cost in `run`.
    fn stop(mut self, run: &mut Run) -> Result<()> {
        // Let it drain what the workload's last connections produced.
        thread::sleep(Duration::from_millis(300));
        let pid = self.child.id();
        run.cpu_seconds = cpu_seconds(pid)?;
        run.peak_rss_kib = peak_rss_kib(pid)?;
        (run.program_runs, run.program_ns) = bpf_program_stats(pid);
        // bpftrace can miss a SIGINT that lands while it sets up: say it again until it listens,
        // and end it for good if it never does.
        for attempt in 0..100 {
            let signal = if attempt < 90 {
                libc::SIGINT
            } else {
                libc::SIGKILL
            };
            if attempt % 10 == 0 || attempt >= 90 {
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(pid as i32, signal) };
            }
            if self.child.try_wait()?.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.child.wait()?;
        let (transitions, lost) = self
            .counted
            .recv_timeout(Duration::from_secs(60))
            .context("the tracer's output did not end")?;
        let lost = lost + self.dropped.load(Ordering::Relaxed);
        run.transitions = transitions;
        run.lost = lost;
        Ok(())
    }
}

fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `Lost 123 events` -> 123.
fn dropped_count(line: &str) -> Option<u64> {
    line.strip_prefix("Lost ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn summary_lost(line: &str) -> u64 {
    line.split("\"lost_events\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid` so far.
/// Runs and run time of the BPF programs `pid` holds, from its fdinfo (zero unless
/// kernel.bpf_stats_enabled is on).
fn bpf_program_stats(pid: u32) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let mut totals = (0, 0);
    for entry in entries.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        let value = |key: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        totals.0 += value("run_cnt:");
        totals.1 += value("run_time_ns:");
    }
    totals
}

/// Turns on the kernel's BPF program statistics for as long as it lives.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let before = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
        if fs::write(BPF_STATS, "1").is_err() {
            eprintln!("xtask: cannot turn on {BPF_STATS}: no kernel program times");
        }
        BpfStats { before }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the parenthesised name: utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / per_second)
}

/// Peak resident memory of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for {pid}"))
}

/// probe's memory while it tracks `pairs * 2` open connections, against an idle probe.
struct Memory {
    connections: usize,
    idle_rss_kib: u64,
    loaded_rss_kib: u64,
    lost: u64,
}

fn measure_memory(probe: &Path, xtask: &Path, connections: usize) -> Result<Memory> {
    let idle_target = Sleeper::start()?;
    let idle = Tracer::probe(probe, idle_target.pid(), &[])?;
    thread::sleep(Duration::from_millis(500));
    // Anonymous memory only: probe's own heap, not the kernel ring buffer's pages mapped into it.
    let idle_rss_kib = status_kib(idle.child.id(), "RssAnon:")?;
    idle.stop(&mut Run::default())?;

    // One process may hold only so many sockets: spread them over several holders.
    let per_holder = (crate::workload::fd_hard_limit().saturating_sub(128) / 2).clamp(1, 50_000);
    let holders_needed = (connections / 2).div_ceil(per_holder);
    let mut holders = Vec::new();
    let hold = ["hold-open", "--pairs", &per_holder.to_string()].map(String::from);
    for _ in 0..holders_needed {
        holders.push(Worker::start(xtask, &hold, "a connection holder")?);
    }
    let mut args: Vec<String> = ["--max-sockets", "262144", "--established-after", "1h"]
        .map(String::from)
        .to_vec();
    for holder in &holders {
        args.extend(["--pid".to_string(), holder.pid().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::probe(probe, holders[0].pid(), &args)?;
    for holder in &mut holders {
        holder.go()?;
    }
    for holder in &holders {
        let ready = holder.answer("a connection holder")?;
        eprintln!("xtask: holder {ready}");
    }
    // Let probe take in every transition.
    thread::sleep(Duration::from_secs(3));
    let loaded_rss_kib = status_kib(tracer.child.id(), "RssAnon:")?;
    let mut run = Run::default();
    tracer.stop(&mut run)?;
    let lost = run.lost;
    for holder in holders {
        holder.finish()?;
    }
    Ok(Memory {
        connections: holders_needed * per_holder * 2,
        idle_rss_kib,
        loaded_rss_kib,
        lost,
    })
}

/// Whether bcc's tcpstates runs on this kernel, and if not, why.
fn bcc_tcpstates_works() -> Result<(), String> {
    let tool = PathBuf::from("/usr/sbin/tcpstates-bpfcc");
    if !tool.exists() && crate::toolchain::apt_install(&["bpfcc-tools"]).is_err() {
        return Err("bpfcc-tools could not be installed".into());
    }
    let output = Command::new("timeout")
        .args(["10", "/usr/sbin/tcpstates-bpfcc"])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match stderr.lines().find(|l| l.contains("kernel headers")) {
        Some(line) => Err(line.trim().to_string()),
        None if output.status.code() == Some(124) => Ok(()),
        None => Err(stderr
            .lines()
            .last()
            .unwrap_or("it failed")
            .trim()
            .to_string()),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Everything measured: the rounds, the timing round, the memory run.
struct Measured<'a> {
    runs: &'a [(usize, Config, Run)],
    timed: &'a [(Config, Run)],
    memory: &'a Memory,
}

fn report(
    measured: Measured,
    configs: &[Config],
    rounds: usize,
    connections: usize,
    concurrency: usize,
    bcc: &Result<(), String>,
) -> String {
    let Measured {
        runs,
        timed,
        memory,
    } = measured;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "What tracing costs a connection-churning workload, measured side by side in one run of `cargo xtask bench --rounds {rounds} --connections {connections} --concurrency {concurrency}`.\n"
    );
    let _ = writeln!(out, "Machine: {}.\n", machine());
    let _ = writeln!(
        out,
        "Workload: one process with a loopback server and {concurrency} client threads making {connections} connections (connect, one byte each way, client closes first), so every connection makes ten TCP state transitions of that process. The configurations run interleaved, {rounds} rounds, in a rotating order, and every tracer run is paired with a run of the workload alone right next to it (before it in one round, after it in the next). Ratio: the tracer run's rate over its pair's, median over the rounds [min, max]; the baseline row's rate is the median of all the runs alone.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | workload conn/s (median) | throughput vs baseline | transitions delivered/s | events lost | tracer CPU s per million transitions | kernel program ns per run | tracer peak RSS |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &config in configs {
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|(_, c, _)| *c == config)
            .map(|(_, _, run)| run)
            .collect();
        let mut rates: Vec<f64> = mine.iter().map(|r| r.rate).collect();
        let mut ratios: Vec<f64> = runs
            .iter()
            .filter(|(_, c, _)| *c == config)
            .map(|(_, _, run)| run.rate / run.paired_rate)
            .collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        let transitions: u64 = mine.iter().map(|r| r.transitions).sum();
        let seconds: f64 = mine.iter().map(|r| r.seconds).sum();
        let cpu: f64 = mine.iter().map(|r| r.cpu_seconds).sum();
        let lost: u64 = mine.iter().map(|r| r.lost).sum();
        let rss = mine.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let (program_runs, program_ns) = timed
            .iter()
            .find(|(c, _)| *c == config)
            .map_or((0, 0), |(_, run)| (run.program_runs, run.program_ns));
        let tracer = config != Config::Baseline;
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} [{:.3}, {:.3}] | {} | {} | {} | {} | {} |",
            config.label(),
            median(&mut rates),
            median(&mut ratios),
            low,
            high,
            if tracer {
                format!("{:.0}", transitions as f64 / seconds)
            } else {
                dash()
            },
            if tracer { lost.to_string() } else { dash() },
            if tracer && transitions > 0 {
                format!("{:.2}", cpu / transitions as f64 * 1e6)
            } else {
                dash()
            },
            if program_runs > 0 {
                format!("{:.0}", program_ns as f64 / program_runs as f64)
            } else {
                dash()
            },
            if tracer {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            } else {
                dash()
            },
        );
    }
    let per_connection = (memory.loaded_rss_kib.saturating_sub(memory.idle_rss_kib) * 1024) as f64
        / memory.connections as f64;
    let _ = writeln!(
        out,
        "\nMemory with {} open connections tracked (both ends of {} loopback connections, held by processes that probe traces): probe's anonymous memory (its heap: RssAnon) {:.1} MiB, against {:.1} MiB when tracing an idle process: **{:.0} bytes per tracked connection**; {} events lost while they opened.\n",
        memory.connections,
        memory.connections / 2,
        memory.loaded_rss_kib as f64 / 1024.0,
        memory.idle_rss_kib as f64 / 1024.0,
        per_connection,
        memory.lost
    );
    let _ = writeln!(out, "Notes:\n");
    let _ = writeln!(
        out,
        "- Kernel program ns per run: the average time of the tracer's BPF programs per run (all its programs), measured in one more run of each configuration with `kernel.bpf_stats_enabled` on; it is off during the rounds, because it adds two clock reads to every run of every program. For probe on an unrelated pid (3) every run is a transition it filters out; for (2) most runs deliver an event."
    );
    let _ = writeln!(
        out,
        "- probe (2) delivers only the workload's transitions and keeps the full model (lifecycles, deadlines, stacks on connects); bpftrace (4) prints every TCP transition of the host with the time in the old state, as tcpstates does, and keeps no model."
    );
    let _ = writeln!(
        out,
        "- probe attaches its BTF tracepoint program (`tp_btf`) by default: the kernel hands it the socket without filling a trace record, and it reads the socket's fields only for transitions it keeps. 2c and 3b run the classic tracepoint program (`--attach tracepoint`, for kernels without BTF), which copies the record the kernel fills for every transition."
    );
    let _ = writeln!(
        out,
        "- Transitions delivered/s is over the workload's run time; a tracer that keeps up delivers about ten per connection."
    );
    match bcc {
        Ok(()) => {
            let _ = writeln!(
                out,
                "- bcc's tcpstates runs on this kernel but is not part of this table."
            );
        }
        Err(why) => {
            let _ = writeln!(
                out,
                "- bcc's `tcpstates-bpfcc` (Debian bpfcc-tools) does not run on this kernel: \"{why}\" (bcc compiles its programs at start against kernel headers, which this kernel does not ship)."
            );
        }
    }
    out
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {memory} GiB, Linux {}",
        kernel.trim()
    )
}
