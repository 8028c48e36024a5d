//! A small synchronous client of QEMU's Machine Protocol (QMP): one connection to one guest's
//! unix socket, the capabilities handshake, and commands answered in order.
//!
//! QMP is line-delimited JSON. After connecting, QEMU sends a greeting; the client must send
//! `qmp_capabilities` before any other command. Asynchronous events (`STOP`, `RESUME`,
//! `SHUTDOWN`, …) may arrive between a command and its answer: they are skipped here, since the
//! driver reads state with queries (`query-status`, `query-migrate`) instead of following events,
//! which a restarted agent could not have seen anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Longest line accepted from QEMU: answers here are a few KiB at most.
const LINE_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached or broke: the QEMU process is gone or not yet listening.
    #[error("QMP socket {0}")]
    Io(#[from] std::io::Error),
    /// QEMU answered with an error (class and description).
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    /// Not QMP (or a line too long).
    #[error("QMP protocol: {0}")]
    Protocol(String),
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and negotiates capabilities. `timeout` bounds every read and write.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut q = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        // The greeting comes first; an asynchronous event QEMU queued on the monitor before this
        // client was attached (a STOP as a migration ends, say) may come ahead of it: skipped.
        for _ in 0..16 {
            let greeting = q.read()?;
            if greeting.get("QMP").is_some() {
                q.execute("qmp_capabilities", json!({}))?;
                return Ok(q);
            }
            if greeting.get("event").is_none() {
                return Err(QmpError::Protocol(format!("expected the QMP greeting, got {greeting}")));
            }
        }
        Err(QmpError::Protocol("no QMP greeting after 16 events".into()))
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader).take(LINE_MAX as u64).read_line(&mut line)?;
        if n == 0 {
            return Err(QmpError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QEMU closed the socket")));
        }
        if !line.ends_with('\n') {
            return Err(QmpError::Protocol(format!("a line longer than {LINE_MAX} bytes")));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {}", line.trim())))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command { command: command.into(), class: field("class"), desc: field("desc") });
            }
            return Err(QmpError::Protocol(format!("unexpected message {v}")));
        }
    }

    /// `query-status`: QEMU's run state (`running`, `paused`, `inmigrate`, `postmigrate`,
    /// `shutdown`, `internal-error`, …).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", json!({}))?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without a status: {r}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A QMP peer that answers from a script, to check the client's handling of events and
    /// errors without QEMU (the driver's tests run real QEMU).
    fn serve(script: Vec<&'static str>) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut got = Vec::new();
            for answer in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(line.trim().to_string());
                w.write_all(answer.as_bytes()).unwrap();
            }
            got
        });
        (dir, h)
    }

    #[test]
    fn skips_events_and_reports_errors_with_their_class() {
        let (dir, h) = serve(vec![
            "{\"return\": {}}\n",
            "{\"event\": \"STOP\", \"timestamp\": {}}\n{\"return\": {\"status\": \"paused\", \"running\": false}}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no migration\"}}\n",
        ]);
        let mut q = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "paused");
        let e = q.execute("migrate_cancel", json!({})).unwrap_err().to_string();
        assert!(e.contains("GenericError") && e.contains("no migration"), "{e}");
        let sent = h.join().unwrap();
        assert_eq!(sent[0], r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(sent[1], r#"{"execute":"query-status"}"#);
    }

    #[test]
    fn a_peer_that_is_not_qmp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"SSH-2.0-OpenSSH\n").unwrap();
        });
        let e = Qmp::connect(&path, Duration::from_secs(5)).err().unwrap().to_string();
        assert!(e.contains("QMP protocol"), "{e}");
        h.join().unwrap();
    }
}
