//! A host watchdog for tests: the Linux `/dev/watchdog` interface on a named pipe, whose reset
//! kills the host's QEMU guests (what a host reset does to them) instead of rebooting the
//! machine the tests run on.
//!
//! Behaviour, as the kernel's watchdog API documents it (Documentation/watchdog/watchdog-api):
//! opening the device arms it; every write pets it; a `V` written before the close disarms it
//! (the magic close); a close without it leaves it counting; when it is not petted for its
//! timeout it fires. After firing it waits to be opened again (the host has "rebooted").
//!
//! `watchdog_helper --device PIPE --timeout-ms N --guests DIR --log FILE` creates the pipe and
//! serves it; on firing it SIGKILLs every QEMU process whose command line names a guest folder
//! in `DIR` (the host's qemu folder) and appends one line per event
//! to the log (`armed`, `petted` — the first pet after each arming —, `disarmed`, `fired
//! killed=N`), each with the time in milliseconds since the Unix epoch, so a test can order the
//! firing against other events.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

enum Input {
    Opened,
    Byte(u8),
    Closed,
}

struct Args {
    device: PathBuf,
    timeout: Duration,
    guests: PathBuf,
    log: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut device, mut timeout, mut guests, mut log) = (None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => device = Some(PathBuf::from(value)),
            "--timeout-ms" => timeout = Some(Duration::from_millis(value.parse().map_err(|e| format!("{e}"))?)),
            "--guests" => guests = Some(PathBuf::from(value)),
            "--log" => log = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        device: device.ok_or("--device is required")?,
        timeout: timeout.ok_or("--timeout-ms is required")?,
        guests: guests.ok_or("--guests is required")?,
        log: log.ok_or("--log is required")?,
    })
}

fn note(log: &Path, what: &str) {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{ms} {what}");
    }
}

/// Kills the QEMU processes of the guests in `dir` (a host's qemu folder); answers how many.
pub fn kill_guests(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    switchyard_testkit::cluster::kill_qemu_naming(&format!("{}/", dir.display()))
}

pub fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("watchdog_helper: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_file(&args.device);
    let path = std::ffi::CString::new(args.device.display().to_string()).expect("no NUL in a path");
    // SAFETY: mkfifo(3) with a valid C string.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
        eprintln!("watchdog_helper: mkfifo {}: {}", args.device.display(), std::io::Error::last_os_error());
        return std::process::ExitCode::FAILURE;
    }
    // The reader: opening blocks until the agent opens the device for writing.
    let (tx, rx) = mpsc::channel();
    let device = args.device.clone();
    std::thread::spawn(move || loop {
        let Ok(mut f) = std::fs::File::open(&device) else { return };
        if tx.send(Input::Opened).is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for b in &buf[..n] {
                        if tx.send(Input::Byte(*b)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if tx.send(Input::Closed).is_err() {
            return;
        }
    });
    note(&args.log, "ready");
    // Armed: the deadline by which it must be petted.
    let mut deadline: Option<Instant> = None;
    let mut magic = false;
    let mut petted = false;
    loop {
        let input = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(i) => Some(i),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return std::process::ExitCode::SUCCESS,
            },
            None => match rx.recv() {
                Ok(i) => Some(i),
                Err(_) => return std::process::ExitCode::SUCCESS,
            },
        };
        match input {
            Some(Input::Opened) => {
                deadline = Some(Instant::now() + args.timeout);
                (magic, petted) = (false, false);
                note(&args.log, "armed");
            }
            Some(Input::Byte(b)) => {
                magic = b == b'V';
                if deadline.is_some() {
                    deadline = Some(Instant::now() + args.timeout);
                    if !petted && !magic {
                        petted = true;
                        note(&args.log, "petted");
                    }
                }
            }
            Some(Input::Closed) if magic => {
                deadline = None;
                note(&args.log, "disarmed");
            }
            // Closed without the magic: it keeps counting.
            Some(Input::Closed) => note(&args.log, "closed without disarming"),
            None => {
                let killed = kill_guests(&args.guests);
                note(&args.log, &format!("fired killed={killed}"));
                deadline = None;
            }
        }
    }
}
