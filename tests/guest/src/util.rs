// SPDX-License-Identifier: GPL-2.0

//! Helpers for guest tests: commands, KFlex state, network namespaces.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::fd::AsFd,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

/// `CONFIG_KFLEX` of the guest kernel: `y` or `m`.
pub fn variant() -> String {
    std::env::var("KFLEX_VARIANT").unwrap_or_else(|_| "y".into())
}

/// Runs a command and returns its output (whatever its exit status).
pub fn run(cmd: &str, args: &[&str]) -> Result<Output> {
    Command::new(cmd).args(args).output().with_context(|| format!("running {cmd} {args:?}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = run(cmd, args)?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Content of /sys/kernel/kflex/status, trimmed.
pub fn kflex_status() -> Result<String> {
    Ok(fs::read_to_string("/sys/kernel/kflex/status")
        .context("reading /sys/kernel/kflex/status")?
        .trim()
        .to_owned())
}

/// Path of kflex.ko for the module variant.
pub fn kflex_ko() -> Result<String> {
    std::env::var("KFLEX_KO").context("KFLEX_KO not set")
}

/// Makes sure KFlex is active: loads kflex.ko when the variant is `m`.
pub fn ensure_kflex() -> Result<()> {
    if kflex_status()? == "absent" {
        sh("insmod", &[&kflex_ko()?])?;
    }
    ensure!(kflex_status()?.starts_with("active "), "KFlex not active");
    Ok(())
}

/// Unloads kflex.ko if loaded (module variant only), once the heaps of
/// earlier tests are gone (their release is deferred by the kernel).
pub fn unload_kflex() -> Result<()> {
    if variant() == "m" && kflex_status()?.starts_with("active ") {
        wait_no_heaps()?;
        // A heap leaves /proc/kflex/heaps before its pages are freed and
        // its reference to the module is dropped (a big heap takes a while).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !run("rmmod", &["kflex"])?.status.success() {
            ensure!(std::time::Instant::now() < deadline, "rmmod kflex: still in use after 20 s");
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Waits (up to 10 s) until no KFlex heap exists.
pub fn wait_no_heaps() -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match fs::read_to_string("/proc/kflex/heaps") {
            Ok(t) if !t.trim().is_empty() => {
                ensure!(std::time::Instant::now() < deadline, "heaps still exist: {t}");
                thread::sleep(Duration::from_millis(50));
            }
            _ => return Ok(()),
        }
    }
}

/// The kernel log.
pub fn dmesg() -> Result<String> {
    sh("dmesg", &[])
}

/// A network namespace with a veth pair: `outer` in the root namespace
/// (10.77.N.1/24), `inner` in the namespace (10.77.N.2/24). Removed on drop.
pub struct VethNs {
    pub ns: String,
    pub outer: String,
    pub inner: String,
    pub outer_ip: String,
    pub inner_ip: String,
}

impl VethNs {
    pub fn new(n: u8) -> Result<VethNs> {
        let v = VethNs {
            ns: format!("kfns{n}"),
            outer: format!("kfv{n}a"),
            inner: format!("kfv{n}b"),
            outer_ip: format!("10.77.{n}.1"),
            inner_ip: format!("10.77.{n}.2"),
        };
        let _ = run("ip", &["netns", "del", &v.ns]);
        let _ = run("ip", &["link", "del", &v.outer]);
        sh("ip", &["netns", "add", &v.ns])?;
        sh(
            "ip",
            &["link", "add", &v.outer, "type", "veth", "peer", "name", &v.inner, "netns", &v.ns],
        )?;
        sh("ip", &["addr", "add", &format!("{}/24", v.outer_ip), "dev", &v.outer])?;
        sh("ip", &["link", "set", &v.outer, "up"])?;
        sh("ip", &["-n", &v.ns, "addr", "add", &format!("{}/24", v.inner_ip), "dev", &v.inner])?;
        sh("ip", &["-n", &v.ns, "link", "set", &v.inner, "up"])?;
        sh("ip", &["-n", &v.ns, "link", "set", "lo", "up"])?;
        Ok(v)
    }

    /// Interface index of the outer end.
    pub fn outer_ifindex(&self) -> Result<u32> {
        let s = fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.outer))?;
        Ok(s.trim().parse()?)
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.ns);
        thread::spawn(move || -> Result<T> {
            let fd = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.outer]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

/// A background process whose stdout lines are collected.
pub struct Background {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn spawn(cmd: &str, args: &[&str]) -> Result<Background> {
        let mut child = Command::new(cmd)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {cmd}"))?;
        let out = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Background { child, lines: rx, seen: Vec::new() })
    }

    /// Waits until a stdout line contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    bail!("no line containing {needle:?} within {timeout:?}; saw {:?}", self.seen)
                }
            }
        }
    }

    /// Sends SIGTERM, waits for exit, returns (success, all stdout lines).
    pub fn terminate(mut self) -> Result<(bool, Vec<String>)> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.wait()?;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        Ok((status.success(), std::mem::take(&mut self.seen)))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Storage for a skeleton's open object. Leaked: a test loads a handful of
/// skeletons, and the skeleton may then live as long as the test needs.
pub fn skel_storage() -> &'static mut std::mem::MaybeUninit<libbpf_rs::OpenObject> {
    Box::leak(Box::new(std::mem::MaybeUninit::uninit()))
}

/// User address at which libbpf mapped heap `map` in this process.
pub fn heap_base(map: &libbpf_rs::MapMut) -> Result<u64> {
    use libbpf_rs::AsRawLibbpf;
    // libbpf leaves the size 0 for arenas.
    let mut len = 0u64;
    // SAFETY: a loaded map of a live skeleton; libbpf returns the address of
    // its mapping of the arena (or NULL).
    let base = unsafe {
        libbpf_rs::libbpf_sys::bpf_map__initial_value(map.as_libbpf_object().as_ptr(), &mut len)
    } as u64;
    ensure!(base != 0, "heap not mapped");
    Ok(base)
}

pub use kflex_load::ds::pin_to;

/// Lets the calling thread run on every CPU again.
pub fn pin_to_all() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for c in 0..nix::sched::CpuSet::count() {
        let _ = set.set(c);
    }
    Ok(nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?)
}
