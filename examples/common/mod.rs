//! What the examples share: option parsing, number formatting, a median with its range, a
//! tiny random generator, timed runs of threads, a latency histogram and a thread's CPU time.
//! Each example uses a part of it.
#![allow(dead_code)]

use std::fmt::Display;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Reads `--name value` and `--name=value` options, giving each to `set` with a way to get its
/// value. `Ok(false)` for `-h` or `--help`.
pub fn parse_options(
    mut args: impl Iterator<Item = String>,
    mut set: impl FnMut(&str, &mut dyn FnMut() -> Result<String, String>) -> Result<(), String>,
) -> Result<bool, String> {
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(false);
        }
        let (name, mut inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            (inline.take())
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        set(&name, &mut value)?;
    }
    Ok(true)
}

/// The error for an option nobody knows.
pub fn unknown(name: &str) -> Result<(), String> {
    Err(format!("unknown option `{name}`"))
}

/// A whole number of at least `min`.
pub fn number<T: FromStr + PartialOrd + Display>(
    name: &str,
    value: &str,
    min: T,
) -> Result<T, String> {
    match value.parse() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "{name} needs a whole number of at least {min}, not `{value}`"
        )),
    }
}

/// The median, minimum and maximum.
pub fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = (values[(n - 1) / 2] + values[n / 2]) / 2.0;
    (median, values[0], values[n - 1])
}

/// `n` rounded to a whole number, with thousands separated: `1,234,567`.
pub fn grouped(n: impl Display) -> String {
    let whole = format!("{n:.0}");
    let (sign, digits) = whole.split_at(usize::from(whole.starts_with('-')));
    let mut out = sign.to_owned();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `text` in lines of at most `WIDTH` characters (a longer word gets a line of its own), the
/// first starting with `first` and the others with `rest`.
pub fn wrapped(text: &str, first: &str, rest: &str) -> String {
    const WIDTH: usize = 100;
    let mut out = first.to_owned();
    let mut line = first.chars().count();
    for (i, word) in text.split_whitespace().enumerate() {
        let length = word.chars().count();
        if i > 0 && line + 1 + length > WIDTH {
            out.push('\n');
            out.push_str(rest);
            line = rest.chars().count();
        } else if i > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += length;
    }
    out
}

/// `1 order`, `2 orders`; `1 pass`, `2 passes`; `1 delivery`, `2 deliveries`.
pub fn plural(n: impl Display, word: &str) -> String {
    let n = n.to_string();
    if n == "1" {
        format!("{n} {word}")
    } else if let Some(stem) = word.strip_suffix('y') {
        format!("{n} {stem}ies")
    } else if word.ends_with('s') {
        format!("{n} {word}es")
    } else {
        format!("{n} {word}s")
    }
}

/// A tiny deterministic generator: the examples need speed, not quality.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The parsed options; or, after printing the help (`--help`, exit 0) or the error (exit 2),
/// the exit code to return.
pub fn options_or_exit<C>(
    parsed: Result<Option<C>, String>,
    help: impl FnOnce() -> String,
    usage: &str,
) -> Result<C, std::process::ExitCode> {
    match parsed {
        Ok(Some(config)) => Ok(config),
        Ok(None) => {
            print!("{}", help());
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("error: {message}\n{usage}\n(--help lists every option with its default)");
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// Runs `threads` threads for `seconds`: each calls `work(i, stop)` (with `i` in
/// `0..threads`) once all have started, and should return soon after `stop` is set. Returns what
/// each returned, in order, and the time from the start to `stop`.
pub fn timed<R: Send>(
    threads: usize,
    seconds: f64,
    work: impl Fn(usize, &AtomicBool) -> R + Sync,
) -> (Vec<R>, Duration) {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let running: Vec<_> = (0..threads)
            .map(|i| {
                let (work, stop, start) = (&work, &stop, &start);
                scope.spawn(move || {
                    start.wait();
                    work(i, stop)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        let elapsed = began.elapsed();
        let results = running
            .into_iter()
            .map(|t| t.join().expect("a thread panicked"));
        (results.collect(), elapsed)
    })
}

/// A histogram of durations in nanoseconds, exact below 32 ns and within 1/16 (6%) above: 16
/// buckets per power of two. Cheap enough to record every operation of a busy thread.
#[derive(Clone)]
pub struct Latencies {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            count: 0,
            max: 0,
        }
    }
}

impl Latencies {
    fn bucket(ns: u64) -> usize {
        if ns < 32 {
            return ns as usize;
        }
        let power = 63 - ns.leading_zeros() as usize; // at least 5
        let top = (ns >> (power - 4)) as usize; // the 5 leading bits: 16..32
        (power - 4) * 16 + top
    }

    /// The largest value that falls in `bucket`.
    fn upper(bucket: usize) -> u64 {
        if bucket < 32 {
            return bucket as u64;
        }
        let (shift, top) = (bucket / 16 - 1, (bucket % 16 + 16) as u64);
        ((top + 1) << shift) - 1
    }

    pub fn record(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)] += 1;
        self.count += 1;
        self.max = self.max.max(ns);
    }

    pub fn add(&mut self, other: &Latencies) {
        (self.counts.iter_mut().zip(&other.counts)).for_each(|(mine, theirs)| *mine += theirs);
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The duration that a fraction `q` of the recorded ones did not exceed (to within its
    /// bucket's width); zero if nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count.max(1));
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank && n > 0 {
                return Duration::from_nanos(Self::upper(bucket).min(self.max));
            }
        }
        Duration::ZERO
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }
}

/// A duration in three significant digits or so: `850 ns`, `12.3 µs`, `1.05 ms`, `2.50 s`.
pub fn short(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (value, unit) = match ns {
        n if n < 1e3 => return format!("{n:.0} ns"),
        n if n < 1e6 => (n / 1e3, "µs"),
        n if n < 1e9 => (n / 1e6, "ms"),
        n => (n / 1e9, "s"),
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

/// The CPU time the calling thread has used so far, where the system says (Linux:
/// `/proc/thread-self/schedstat`); `None` elsewhere.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// What a store counted itself (`Store::stats`, summed over `counted`), as one line of text.
pub fn stats_line(counted: &[stm_store::Stats]) -> String {
    let sum = |field: fn(&stm_store::Stats) -> u64| grouped(counted.iter().map(field).sum::<u64>());
    format!(
        "Store::stats: {} commits, {} conflicts, {} BusyRetry, {} commits finished by another \
         thread than the one that started them, {} snapshots taken the slow way (writers kept \
         changing their keys), {} transaction runs",
        sum(|s| s.commits),
        sum(|s| s.conflicts),
        sum(|s| s.busy_retries),
        sum(|s| s.helped),
        sum(|s| s.snapshot_claims),
        sum(|s| s.tx_attempts),
    )
}
