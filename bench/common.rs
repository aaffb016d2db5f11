//! What the benchmarks that run real `target/release/tokenproxy` processes share.

// Each benchmark uses a part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `tokenproxy run`, killed when dropped.
pub struct Instance {
    child: Child,
    /// `http://ADDR` of the proxy and admin listeners.
    pub proxy: String,
    pub admin: String,
}

impl Instance {
    /// Starts `cmd` (a `tokenproxy run` command line, possibly under a wrapper such
    /// as `taskset`) and waits for its "listening" line.
    pub fn start(mut cmd: Command) -> Instance {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run target/release/tokenproxy (cargo build --release first)");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let line = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("tokenproxy listening"))
            .expect("tokenproxy started");
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let field = |name: &str| {
            let rest = &line[line.find(&format!("{name}=")).expect("address") + name.len() + 1..];
            rest.split_whitespace().next().unwrap_or("").to_owned()
        };
        Instance {
            proxy: format!("http://{}", field("proxy")),
            admin: format!("http://{}", field("admin")),
            child,
        }
    }

    /// The proxy listener's address, without the scheme.
    pub fn proxy_addr(&self) -> &str {
        self.proxy.trim_start_matches("http://")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
