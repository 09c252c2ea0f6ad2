//! Helpers for worker tests: a task file, a config, the real `labelmill worker` process, documents.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use serde_json::{json, Value};

/// Two tasks: `ticket` (head truncation) and `strict` (rejects documents over 8 tokens).
pub const TASKS: &str = r#"
[[task]]
name = "ticket"
preset = "llama2-chat"
instruction = "Classify the ticket: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical", "account", "other"]
max_doc_tokens = 64
truncation = "head"

[[task]]
name = "strict"
template = "Review: {{text}}\nSentiment:"
labels = ["positive", "negative"]
max_doc_tokens = 8
truncation = "reject"
"#;

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A temp dir with the generated model's paths, a task file and room for configs and logs.
pub struct Setup {
    /// Holds the files.
    pub dir: tempfile::TempDir,
    /// Model directory (model.gguf, tokenizer.json).
    pub model: PathBuf,
}

impl Setup {
    /// Generates (once per test binary) the tiny model and writes the task file.
    pub fn new() -> Self {
        let model = super::model_dir(&super::gqa_shape(), GgmlDType::Q8_0, 31);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tasks.toml"), TASKS).unwrap();
        Self { dir, model }
    }

    /// Writes a worker config with `body` (the broker sections and any overrides) after the model
    /// section; returns its path. Unless `body` has an `[http]` section, the HTTP server listens
    /// on a free port of 127.0.0.1 (tests run workers side by side).
    pub fn config(&self, name: &str, body: &str) -> PathBuf {
        let http = if body.contains("[http]") {
            ""
        } else {
            "[http]\nlisten = \"127.0.0.1:0\"\n"
        };
        let text = format!(
            "[model]\nmodel = {:?}\ntokenizer = {:?}\ntasks = {:?}\n{http}\n{body}",
            self.model.join("model.gguf"),
            self.model.join("tokenizer.json"),
            self.dir.path().join("tasks.toml"),
        );
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// A running `labelmill worker` process; killed when dropped.
pub struct WorkerProc {
    child: Child,
    /// Its stderr (logs), in a file.
    pub log: PathBuf,
}

impl WorkerProc {
    /// Starts the worker on `config`, logging to `log`.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// As [`Self::start`], with extra environment variables (`LABELMILL_FAULTS`, say).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_labelmill"))
            .args(["--threads", "1", "worker", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("LABELMILL_LOG", "info,labelmill=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            f.read_to_string(&mut s).ok();
        }
        s
    }

    /// Waits until the log contains `needle` (panics after `timeout`, or if the worker exits).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "worker exited ({status}) before logging '{needle}':\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "worker did not log '{needle}' within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    /// The address of its HTTP server (`/metrics`, `/healthz`, `/readyz`), from its log.
    pub fn http_addr(&mut self) -> std::net::SocketAddr {
        let needle = "http server listening";
        self.wait_for_log(needle, Duration::from_secs(60));
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in '{line}'"));
        addr.parse().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (panics after `timeout`).
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "worker did not exit within {timeout:?} of SIGTERM:\n{}",
            self.log_text()
        );
    }

    /// The exit report (the JSON line the worker prints last on stderr).
    pub fn report(&self) -> Value {
        let text = self.log_text();
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no report in:\n{text}"));
        serde_json::from_str(line).unwrap()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // LABELMILL_TEST_KEEP_LOGS=DIR keeps every worker's log there, for debugging.
        if let Ok(dir) = std::env::var("LABELMILL_TEST_KEEP_LOGS") {
            let name = format!("{}-{}", std::process::id(), self.child.id());
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name + ".log"));
        }
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `n` good documents for the `ticket` task with ids `d-0..`.
pub fn good_docs(n: usize) -> Vec<(String, Vec<u8>)> {
    let words = [
        "invoice", "crash", "password", "refund", "server", "login", "my", "account", "error",
        "payment", "help", "update", "slow", "delete", "card", "charged",
    ];
    (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 20;
            let text: Vec<&str> = (0..len)
                .map(|j| words[(i * 5 + j * 3) % words.len()])
                .collect();
            let id = format!("d-{i}");
            let doc = json!({"id": id, "task": "ticket", "text": text.join(" ")});
            (id, serde_json::to_vec(&doc).unwrap())
        })
        .collect()
}

/// One payload of every bad input class, with the code it must be dead-lettered with.
pub fn bad_docs(max_payload: usize) -> Vec<(&'static str, Vec<u8>)> {
    let long: Vec<&str> = std::iter::repeat_n("word", 40).collect();
    vec![
        (
            "invalid_utf8",
            b"{\"id\":\"b-1\",\"text\":\"caf\xe9\"}".to_vec(),
        ),
        (
            "malformed_json",
            br#"{"id":"b-2","text":"unclosed"#.to_vec(),
        ),
        (
            "schema_invalid",
            br#"{"id":"b-3","body":"no text field"}"#.to_vec(),
        ),
        ("schema_invalid", br#"["b-4"]"#.to_vec()),
        (
            "payload_too_large",
            serde_json::to_vec(&json!({"id": "b-5", "text": "x".repeat(max_payload)})).unwrap(),
        ),
        ("empty_text", br#"{"id":"b-6","text":"   "}"#.to_vec()),
        (
            "unknown_task",
            br#"{"id":"b-7","task":"nope","text":"hello"}"#.to_vec(),
        ),
        (
            "token_limit_exceeded",
            serde_json::to_vec(&json!({"id": "b-8", "task": "strict", "text": long.join(" ")}))
                .unwrap(),
        ),
    ]
}

/// Counts of a delivery check (Jepsen's queue checker): every id must be seen, none unexpected.
#[derive(Debug, Default)]
pub struct Tally {
    /// Ids with at least one result.
    pub unique: usize,
    /// Results beyond the first per id.
    pub duplicates: usize,
    /// Expected ids with no result.
    pub lost: Vec<String>,
    /// Results for ids never sent.
    pub unexpected: Vec<String>,
}

/// The `id` of every result record.
pub fn result_ids(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// Compares result ids with the ids sent.
pub fn tally(sent: &[String], got: &[String]) -> Tally {
    use std::collections::HashMap;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    let sent_set: std::collections::HashSet<&str> = sent.iter().map(String::as_str).collect();
    Tally {
        unique: counts.len(),
        duplicates: counts.values().map(|c| c - 1).sum(),
        lost: sent
            .iter()
            .filter(|s| !counts.contains_key(s.as_str()))
            .cloned()
            .collect(),
        unexpected: counts
            .keys()
            .filter(|k| !sent_set.contains(*k))
            .map(|k| k.to_string())
            .collect(),
    }
}

/// `GET path` on `addr`: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the Prometheus sample `name{labels}` in `text`, where every `k="v"` of `labels`
/// must be among the sample's labels; summed over the samples that match. A series that is not
/// there is an error (a misnamed metric must not read as 0): see [`metric_opt`] to poll for one.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels)
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in the metrics:\n{text}"))
}

/// As [`metric`], `None` where no sample matches.
pub fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}
