//! What the examples share: option parsing, number formatting, a median with its range, and a
//! tiny random generator. Each example uses a part of it.
#![allow(dead_code)]

use std::fmt::Display;
use std::str::FromStr;

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

/// What a store counted itself (`Store::stats`, summed over `counted`), as one line of text.
pub fn stats_line(counted: &[stm_store::Stats]) -> String {
    let sum = |field: fn(&stm_store::Stats) -> u64| grouped(counted.iter().map(field).sum::<u64>());
    format!(
        "Store::stats: {} commits, {} conflicts, {} BusyRetry, {} helped to completion, \
         {} snapshots that claimed their keys, {} transaction runs",
        sum(|s| s.commits),
        sum(|s| s.conflicts),
        sum(|s| s.busy_retries),
        sum(|s| s.helped),
        sum(|s| s.snapshot_claims),
        sum(|s| s.tx_attempts),
    )
}
