// SPDX-License-Identifier: GPL-2.0

//! Pipeline tests: KFlex enablement (built-in and module) and `kflex-load`.

use std::{net::UdpSocket, time::Duration};

use anyhow::{ensure, Context, Result};

use crate::util::*;

/// Built-in variant: KFlex is active from boot and logged its version.
pub fn builtin_active_at_boot() -> Result<()> {
    let st = kflex_status()?;
    ensure!(st.starts_with("active ") && st.ends_with(" built-in"), "status: {st}");
    let log = dmesg()?;
    ensure!(log.contains("kflex: KFlex 0.1.0 active (built-in)"), "no init line in dmesg");
    ensure!(
        run("rmmod", &["kflex"])?.status.code() != Some(0),
        "rmmod of a built-in component succeeded"
    );
    Ok(())
}

/// Module variant: `insmod kflex.ko` activates KFlex, `rmmod kflex` removes it, twice.
pub fn module_load_unload() -> Result<()> {
    unload_kflex()?;
    ensure!(kflex_status()? == "absent", "status before insmod: {}", kflex_status()?);
    for round in 0..2 {
        sh("insmod", &[&kflex_ko()?])?;
        let st = kflex_status()?;
        ensure!(st.starts_with("active ") && st.ends_with(" module"), "round {round}: {st}");
        let mods = std::fs::read_to_string("/proc/modules")?;
        ensure!(mods.lines().any(|l| l.starts_with("kflex ")), "kflex not in /proc/modules");
        sh("rmmod", &["kflex"])?;
        ensure!(kflex_status()? == "absent", "round {round}: still {}", kflex_status()?);
    }
    let log = dmesg()?;
    ensure!(log.matches("kflex: KFlex 0.1.0 active (module)").count() >= 2, "init lines missing");
    ensure!(log.matches("kflex: KFlex unloaded").count() >= 2, "exit lines missing");
    Ok(())
}

/// `kflex-load` attaches the XDP counter to a veth and counts the UDP
/// packets sent from the other namespace; it detaches on SIGTERM.
pub fn counter_counts_veth_traffic() -> Result<()> {
    ensure_kflex()?;
    let veth = VethNs::new(1)?;
    let ifindex = veth.outer_ifindex()?.to_string();
    let mut loader = Background::spawn("kflex-load", &["--ifindex", &ifindex])?;
    let ready = loader.wait_for("ready", Duration::from_secs(60))?;
    ensure!(ready.contains(&veth.outer), "ready line does not name the interface: {ready}");
    let link = sh("ip", &["link", "show", &veth.outer])?;
    ensure!(link.contains("xdp"), "no XDP program on {}: {link}", veth.outer);

    const N: usize = 100;
    const PAYLOAD: usize = 64;
    let dst = format!("{}:7777", veth.outer_ip);
    veth.in_ns(move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..N {
            sock.send_to(&[i as u8; PAYLOAD], &dst)?;
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(300));

    let (ok, lines) = loader.terminate()?;
    ensure!(ok, "kflex-load failed: {lines:?}");
    let summary = lines
        .iter()
        .find(|l| l.contains(" packets, "))
        .with_context(|| format!("no counter line in {lines:?}"))?;
    let num = |word: &str| -> Result<u64> {
        let before = summary.split(word).next().context("format")?;
        Ok(before.trim().rsplit(' ').next().context("format")?.parse()?)
    };
    let (packets, bytes) = (num(" packets")?, num(" bytes")?);
    println!("counter: {summary}");
    // N UDP datagrams plus at most a few ARP/IPv6 frames.
    ensure!((N as u64..=N as u64 + 10).contains(&packets), "packets = {packets}");
    ensure!(bytes >= (N * (14 + 20 + 8 + PAYLOAD)) as u64, "bytes = {bytes}");
    ensure!(lines.iter().any(|l| l == "detached"), "no detach line: {lines:?}");
    let link = sh("ip", &["link", "show", &veth.outer])?;
    ensure!(!link.contains("xdp"), "XDP program still attached after exit: {link}");
    Ok(())
}

/// Runs kflex-load expecting failure; returns stderr.
fn load_fails(args: &[&str]) -> Result<String> {
    let out = run("kflex-load", args)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "kflex-load {args:?} succeeded");
    Ok(err)
}

/// Bad invocations fail with messages that say what is wrong.
pub fn bad_invocations_fail_clearly() -> Result<()> {
    ensure_kflex()?;
    let e = load_fails(&["--ifindex", "9999"])?;
    ensure!(e.contains("no network interface has ifindex 9999"), "{e}");
    let e = load_fails(&[])?;
    ensure!(e.contains("--ifindex N is required"), "{e}");
    let e = load_fails(&["--ifindex", "lo"])?;
    ensure!(e.contains("invalid value"), "{e}");
    let e = load_fails(&["--kredis", "--port", "6998"])?;
    ensure!(e.contains("nothing listens on TCP port 6998"), "--kredis: {e}");
    let e = load_fails(&["--kmemcache", "--port", "6998"])?;
    ensure!(
        e.contains("nothing listens on TCP port 6998") && e.contains("redis-server --port 6998"),
        "{e}"
    );
    let e = load_fails(&["--kmemcache", "--max-value", "1048577"])?;
    ensure!(e.contains("--max-value 1048577 is more than this offload holds"), "{e}");
    let e = load_fails(&["--max-value", "100", "--ifindex", "1"])?;
    ensure!(e.contains("--max-value applies to the Redis GET/SET offload only"), "{e}");
    let e = load_fails(&["--kmemcached", "--ifindex", "1", "--port", "6999"])?;
    ensure!(
        e.contains("nothing listens on UDP port 6999") && e.contains("memcached -U 6999"),
        "{e}"
    );
    let e = load_fails(&["--kmemcached", "--kredis"])?;
    ensure!(e.contains("cannot be used with"), "{e}");
    let out = run(
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups", "kflex-load", "--ifindex", "1"],
    )?;
    let e = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && e.contains("must run as root"), "as nobody: {e}");
    if variant() == "m" {
        unload_kflex()?;
        let e = load_fails(&["--ifindex", "1"])?;
        ensure!(e.contains("insmod kflex.ko"), "without the module: {e}");
    }
    Ok(())
}
