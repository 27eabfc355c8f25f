//! Talking to a test daemon's HTTP listener, and driving headless Chromium over the DevTools
//! protocol (for the dashboard and the cross-site tests).

#![allow(dead_code)]

use super::daemon::Tree;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP client that never turns a status into an error.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// An answer: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("the request reached the daemon");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    Answer {
        status: response.status().as_u16(),
        content_type,
        body,
    }
}

/// The base URL of a running test daemon (from `state/http.address`).
pub fn base_url(tree: &Tree) -> String {
    let file = tree.path("var/state/http.address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if !text.trim().is_empty() {
                return format!("http://{}", text.trim());
            }
        }
        assert!(Instant::now() < deadline, "no {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.call())
}

/// A POST with the header darkroom asks of state-changing requests.
pub fn post(url: &str, body: &[u8]) -> Answer {
    post_with(url, body, &[("X-Darkroom-Request", "1")])
}

pub fn post_with(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut request = agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send(body))
}

/// A multipart/form-data body with one file part.
pub fn multipart(part: &str, file_name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "darkroom-test-boundary-7f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Polls `GET url` until `done` holds for its JSON.
pub fn wait_json(url: &str, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = get(url);
        if answer.status == 200 {
            let value = answer.json();
            if done(&value) {
                return value;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            answer.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Headless Chromium with its DevTools websocket.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("headless Chromium is needed for the dashboard tests: scripts/test installs the Debian package chromium")
}

impl Browser {
    /// Starts Chromium on `url` with a fresh profile, `width` x `height` pixels.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some(port) = text.lines().next().and_then(|l| l.parse::<u16>().ok()) {
                    break port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not start its DevTools"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let page_socket = loop {
            let list = get(&format!("http://127.0.0.1:{port}/json/list"));
            if list.status == 200 {
                let pages = list.json();
                if let Some(url) = pages
                    .as_array()
                    .and_then(|p| p.iter().find(|t| t["type"] == "page"))
                    .and_then(|p| p["webSocketDebuggerUrl"].as_str())
                {
                    break url.to_string();
                }
            }
            assert!(Instant::now() < deadline, "Chromium has no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (socket, _) = tungstenite::connect(page_socket.as_str()).unwrap();
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            next_id: 1,
        };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        );
        browser.call("Page.reload", json!({}));
        std::thread::sleep(Duration::from_millis(200));
        browser.wait_for("the page to load", "document.readyState === 'complete'");
        browser
    }

    /// Sends a DevTools command and waits for its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(tungstenite::Message::Text(message.into()))
            .unwrap();
        loop {
            let message = self.socket.read().unwrap();
            let tungstenite::Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (a page still loading, where it throws,
    /// is not there yet).
    pub fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&guarded) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out in the browser waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// A PNG screenshot of the page, saved at `path`.
    pub fn screenshot(&mut self, path: &Path) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let bytes = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(path, bytes).unwrap();
        path.to_path_buf()
    }
}

/// Standard base64 (what DevTools sends screenshots in).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}
