//! The binary's handling of flags and config files: bad input exits non-zero, naming the field.

use std::process::Command;

fn run_with_config(yaml: &str) -> (Option<i32>, String) {
    let dir = crate::support::temp_dir("badcfg");
    let f = dir.join("prometheus.yml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .arg("--config.file")
        .arg(&f)
        .arg("--storage.tsdb.path")
        .arg(dir.join("data"))
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{}", crate::support::free_port()))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_field_exits_nonzero_naming_it() {
    let (code, err) = run_with_config(
        "scrape_configs:\n  - job_name: x\n    scrape_intervall: 5s\n    static_configs: [{targets: ['127.0.0.1:1']}]\n",
    );
    assert_ne!(code, Some(0));
    assert!(code.is_some(), "exited by a signal");
    assert!(
        err.contains("scrape_intervall") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn bad_value_exits_nonzero_naming_it() {
    let (code, err) = run_with_config("global:\n  scrape_timeout: 1y2q\n");
    assert_ne!(code, Some(0));
    assert!(
        err.contains("scrape_timeout") || err.contains("1y2q"),
        "{err}"
    );
}

#[test]
fn bad_flag_exits_nonzero_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .args(["--storage.tsdb.retention.size", "lots"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--storage.tsdb.retention.size"));
}

#[test]
fn help_lists_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config.file",
        "--storage.tsdb.path",
        "--storage.tsdb.retention.time",
        "--storage.tsdb.retention.size",
        "--web.listen-address",
        "--log.level",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn sighup_reloads_the_config() {
    let perch = crate::support::Perch::start(
        "sighup",
        Some("scrape_configs:\n  - job_name: before\n    static_configs: [{targets: ['127.0.0.1:1']}]\n"),
    );
    let (_, b) = perch.get("/api/v1/targets");
    assert!(b.contains("\"scrapePool\":\"before\""), "{b}");
    std::fs::write(
        perch.dir.join("prometheus.yml"),
        "scrape_configs:\n  - job_name: after\n    static_configs: [{targets: ['127.0.0.1:1']}]\n",
    )
    .unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &perch.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    crate::support::wait_until(std::time::Duration::from_secs(10), || {
        perch
            .get("/api/v1/targets")
            .1
            .contains("\"scrapePool\":\"after\"")
    });
    // A broken file keeps the running config, and the agent keeps running.
    std::fs::write(
        perch.dir.join("prometheus.yml"),
        "scrape_configs: [{job_nam: x}]\n",
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &perch.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (s, b) = perch.get("/api/v1/targets");
    assert_eq!(s, 200);
    assert!(b.contains("\"scrapePool\":\"after\""), "{b}");
    let (_, b) = perch.get("/api/v1/status/runtimeinfo");
    assert!(b.contains("\"reloadConfigSuccess\":false"), "{b}");
}

#[test]
fn unsupported_scrape_client_fields_exit_naming_them() {
    // With TLS (the default) a missing CA file is named; without, the build says it has none.
    let tls_want = if cfg!(feature = "tls") {
        "scrape_configs[0].tls_config.ca_file: unable to read CA certificate"
    } else {
        "scrape_configs[0].tls_config: this build of Perch has no TLS"
    };
    for (field, want) in [
        ("tls_config: {ca_file: x}", tls_want),
        (
            "oauth2: {client_id: x}",
            "scrape_configs[0].oauth2: not supported by Perch",
        ),
        (
            "proxy_url: 'http://p:1'",
            "scrape_configs[0].proxy_url: not supported by Perch",
        ),
        ("scheme: ftp", "scrape_configs[0].scheme"),
    ] {
        let (code, err) = run_with_config(&format!(
            "scrape_configs:\n  - job_name: x\n    {field}\n    static_configs: [{{targets: ['127.0.0.1:1']}}]\n"
        ));
        assert_ne!(code, Some(0), "{field}");
        assert!(err.contains(want), "{field}: {err}");
    }
}
