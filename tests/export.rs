//! `brood export systemd` and `brood export kubernetes`: byte-for-byte
//! goldens for a Procfile and brood.toml fixtures, determinism,
//! `systemd-analyze verify` on every generated unit, the Kubernetes
//! manifests read back as YAML, the refusals of what a Deployment cannot
//! express, and the app name's default.
//!
//! Fixtures and goldens live in `tests/golden/export/FIXTURE/`: the config
//! (`Procfile` and `.env`, or `brood.toml`) and one directory of expected
//! files per export (`systemd/`, `systemd-254/`, `kubernetes/`). Paths that
//! depend on the checkout's location (a Procfile's WorkingDirectory= is its
//! directory) are written as `@CONFIG_DIR@` in the goldens.
//!
//! To regenerate the goldens after an intended change, run
//! `BROOD_BLESS=1 cargo test --test export`, then review the diff by eye.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use util::*;

// ---------------------------------------------------------------------------
// Helpers

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/export")
        .join(name)
}

/// The config file of a fixture directory.
fn fixture_config(name: &str) -> PathBuf {
    let dir = fixture(name);
    ["brood.toml", "Procfile"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("fixture {name} has no config"))
}

/// Every file of `dir` (not recursive), by name.
fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            files.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    files
}

/// The result of one `brood export` run.
struct Export {
    out: Output,
    files: BTreeMap<String, Vec<u8>>,
    // Keeps the output directory alive.
    _dir: TempDir,
    out_dir: PathBuf,
}

/// `brood export KIND -f CONFIG -o TMP ARGS...`, run to the end.
fn export(kind: &str, config: &Path, args: &[&str]) -> Export {
    let dir = TempDir::new("export-out");
    let out_dir = dir.join("out");
    let mut argv: Vec<std::ffi::OsString> = vec![
        "export".into(),
        kind.into(),
        "-f".into(),
        config.into(),
        "-o".into(),
        out_dir.clone().into(),
    ];
    argv.extend(args.iter().map(Into::into));
    let out = Brood::new("export")
        .raw_args(argv)
        .watchdog(std::time::Duration::from_secs(20))
        .run();
    out.assert_no_panic();
    let files = read_dir_files(&out_dir);
    Export {
        out,
        files,
        _dir: dir,
        out_dir,
    }
}

/// Replaces the fixture directory's absolute path with `@CONFIG_DIR@`.
fn normalize(text: &[u8], fixture_name: &str) -> Vec<u8> {
    let dir = std::fs::canonicalize(fixture(fixture_name)).unwrap();
    String::from_utf8(text.to_vec())
        .expect("export output is UTF-8")
        .replace(dir.to_str().unwrap(), "@CONFIG_DIR@")
        .into_bytes()
}

/// Compares one export of a fixture with its goldens in `FIXTURE/GOLDEN/`
/// (or writes them, with BROOD_BLESS=1).
fn check_golden(fixture_name: &str, golden: &str, kind: &str, args: &[&str]) {
    let ex = export(kind, &fixture_config(fixture_name), args);
    ex.out.assert_code(0);
    assert!(!ex.files.is_empty(), "nothing written{}", ex.out.context());
    // Every written file's path is printed, one per line.
    let printed: Vec<String> = ex.out.stdout_lines();
    let expected_printed: Vec<String> = ex
        .files
        .keys()
        .map(|n| ex.out_dir.join(n).display().to_string())
        .collect();
    let mut sorted = printed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        expected_printed,
        "stdout must list each written path{}",
        ex.out.context()
    );

    let actual: BTreeMap<String, Vec<u8>> = ex
        .files
        .iter()
        .map(|(n, b)| (n.clone(), normalize(b, fixture_name)))
        .collect();
    let golden_dir = fixture(fixture_name).join(golden);
    if std::env::var_os("BROOD_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden_dir);
        std::fs::create_dir_all(&golden_dir).unwrap();
        for (name, bytes) in &actual {
            std::fs::write(golden_dir.join(name), bytes).unwrap();
        }
        eprintln!("BLESSED {}", golden_dir.display());
        return;
    }
    let expected = read_dir_files(&golden_dir);
    assert!(
        !expected.is_empty(),
        "no goldens in {} (generate them with BROOD_BLESS=1 and review them)",
        golden_dir.display()
    );
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the set of written files differs from {}",
        golden_dir.display()
    );
    for (name, want) in &expected {
        let got = &actual[name];
        assert!(
            got == want,
            "{name} differs from its golden {}\n--- expected:\n{}\n--- actual:\n{}",
            golden_dir.join(name).display(),
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(got)
        );
    }
}

/// A config written into a fresh temp dir.
fn temp_config(name: &str, file: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

// ---------------------------------------------------------------------------
// Goldens

#[test]
fn systemd_procfile_matches_golden() {
    check_golden("procfile", "systemd", "systemd", &["--app", "demo"]);
}

#[test]
fn kubernetes_procfile_matches_golden() {
    check_golden(
        "procfile",
        "kubernetes",
        "kubernetes",
        &["--app", "demo", "--image", "registry.example/demo:1.0"],
    );
}

#[test]
fn systemd_toml_matches_golden() {
    check_golden("toml", "systemd", "systemd", &["--app", "demo"]);
}

#[test]
fn systemd_toml_for_systemd_254_with_user_matches_golden() {
    check_golden(
        "toml",
        "systemd-254",
        "systemd",
        &["--app", "demo", "--user", "demo", "--systemd-version", "254"],
    );
}

#[test]
fn kubernetes_toml_matches_golden() {
    check_golden(
        "toml-k8s",
        "kubernetes",
        "kubernetes",
        &["--app", "demo", "--image", "registry.example/demo:1.0"],
    );
}

#[test]
fn systemd_probes_match_golden() {
    check_golden("toml-probes", "systemd", "systemd", &["--app", "demo"]);
}

#[test]
fn kubernetes_probes_match_golden() {
    check_golden(
        "toml-probes",
        "kubernetes",
        "kubernetes",
        &["--app", "demo", "--image", "registry.example/demo:1.0"],
    );
}

// ---------------------------------------------------------------------------
// Determinism

#[test]
fn export_is_deterministic() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("procfile", "systemd", &["--app", "demo"]),
        ("toml", "systemd", &["--app", "demo"]),
        ("toml", "systemd", &["--app", "demo", "--systemd-version", "254"]),
        ("procfile", "kubernetes", &["--app", "demo", "--image", "img"]),
        ("toml-k8s", "kubernetes", &["--app", "demo", "--image", "img"]),
        ("toml-probes", "systemd", &["--app", "demo"]),
        ("toml-probes", "kubernetes", &["--app", "demo", "--image", "img"]),
    ];
    for (fixture_name, kind, args) in cases {
        let config = fixture_config(fixture_name);
        let first = export(kind, &config, args);
        first.out.assert_code(0);
        for _ in 0..3 {
            let again = export(kind, &config, args);
            again.out.assert_code(0);
            assert!(
                again.files == first.files,
                "export {kind} of {fixture_name} differs between two runs{}{}",
                first.out.context(),
                again.out.context()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// systemd-analyze verify

/// Makes sure `systemd-analyze` can run; `make test-deps` installs it.
/// Never silently passes.
fn ensure_systemd_analyze() {
    let works = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "this test needs systemd-analyze: run `make test-deps` (it installs systemd's tools)"
    );
}

fn systemd_version() -> u32 {
    let out = Command::new("systemd-analyze").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `systemd-analyze verify ./UNIT` inside `dir`: must exit 0 and print
/// nothing on stderr, except that it may call the keys in `newer` unknown
/// (keys from a systemd newer than this machine's): every other line of the
/// unit is still checked.
fn verify_tolerating(dir: &Path, unit: &str, newer: &[&str]) {
    let out = Command::new("systemd-analyze")
        .args(["verify", &format!("./{unit}")])
        .current_dir(dir)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !newer
                .iter()
                .any(|k| l.ends_with(&format!(": Unknown key '{k}' in section [Service], ignoring.")))
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify ./{unit} in {}: {}\n--- stderr:\n{stderr}\n--- unit:\n{}",
        dir.display(),
        out.status,
        std::fs::read_to_string(dir.join(unit.replace("@1.", "@."))).unwrap_or_default()
    );
}

/// Verifies the target and one instance of every template in `ex`.
fn verify_all(ex: &Export) {
    verify_all_tolerating(ex, &[]);
}

fn verify_all_tolerating(ex: &Export, newer: &[&str]) {
    let mut verified = 0;
    for name in ex.files.keys() {
        if let Some(prefix) = name.strip_suffix("@.service") {
            verify_tolerating(&ex.out_dir, &format!("{prefix}@1.service"), newer);
            verified += 1;
        } else if name.ends_with(".target") {
            verify_tolerating(&ex.out_dir, name, newer);
        } else {
            panic!("unexpected file {name} from export systemd");
        }
    }
    assert!(verified > 0, "no template units to verify");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    ensure_systemd_analyze();
    for fixture_name in ["procfile", "toml", "toml-k8s", "toml-probes"] {
        let ex = export("systemd", &fixture_config(fixture_name), &["--app", "demo"]);
        ex.out.assert_code(0);
        verify_all(&ex);
    }
}

#[test]
fn systemd_254_units_pass_systemd_analyze_verify() {
    ensure_systemd_analyze();
    // An older systemd-analyze does not know the two keys written for 254
    // (by design: the default export leaves them out); it still checks every
    // other line, and calls nothing else unknown.
    let newer: &[&str] = if systemd_version() < 254 {
        &["RestartSteps", "RestartMaxDelaySec"]
    } else {
        &[]
    };
    let ex = export(
        "systemd",
        &fixture_config("toml"),
        &["--app", "demo", "--systemd-version", "254"],
    );
    ex.out.assert_code(0);
    for key in ["RestartSteps=", "RestartMaxDelaySec="] {
        assert!(
            ex.files
                .values()
                .any(|text| String::from_utf8_lossy(text).contains(key)),
            "no {key} in the 254 export"
        );
    }
    verify_all_tolerating(&ex, newer);
}

// ---------------------------------------------------------------------------
// Kubernetes manifests as YAML

/// Converts a YAML file (every document in it) to JSON through PyYAML
/// (`make test-deps` installs it).
fn yaml_to_json(path: &Path) -> Value {
    const CONVERT: &str =
        "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3")
        .args(["-c", CONVERT])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 with PyYAML (make test-deps): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'yaml'"),
        "this test needs PyYAML: run `make test-deps`"
    );
    assert!(
        out.status.success(),
        "{} does not parse as YAML: {}\n{stderr}",
        path.display(),
        out.status,
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

/// The one Deployment in a manifest file, checked for the common shape.
fn deployment(dir: &Path, file: &str, app: &str, program: &str, image: &str) -> Value {
    let docs = yaml_to_json(&dir.join(file));
    let docs = docs.as_array().unwrap();
    assert_eq!(docs.len(), 1, "one document per file: {docs:?}");
    let d = docs[0].clone();
    assert_eq!(d["apiVersion"], "apps/v1", "{d}");
    assert_eq!(d["kind"], "Deployment", "{d}");
    assert_eq!(d["metadata"]["name"], format!("{app}-{program}"), "{d}");
    let labels = json!({"app.kubernetes.io/name": program, "app.kubernetes.io/part-of": app});
    assert_eq!(d["metadata"]["labels"], labels, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"], labels, "{d}");
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"], labels,
        "the selector must match the pod template's labels: {d}"
    );
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{d}");
    let c = &containers[0];
    assert_eq!(c["name"], program, "{d}");
    assert_eq!(c["image"], image, "{d}");
    assert_eq!(c["command"], json!(["brood", "init", "--"]), "{d}");
    d
}

#[test]
fn kubernetes_manifests_parse_as_yaml_with_the_expected_fields() {
    let image = "registry.example/demo:1.0";
    let ex = export(
        "kubernetes",
        &fixture_config("toml-k8s"),
        &["--app", "demo", "--image", image],
    );
    ex.out.assert_code(0);
    assert_eq!(
        ex.files.keys().collect::<Vec<_>>(),
        ["demo-web.yaml", "demo-worker.yaml"],
        "{}",
        ex.out.context()
    );

    let web = deployment(&ex.out_dir, "demo-web.yaml", "demo", "web", image);
    assert_eq!(web["spec"]["replicas"], 2, "replicas = numprocs: {web}");
    let pod = &web["spec"]["template"]["spec"];
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 10,
        "from stop_timeout: {web}"
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "/usr/bin/env",
            "python3",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "8000"
        ]),
        "args = the program's argv: {web}"
    );
    assert_eq!(c["workingDir"], "/srv/demo", "{web}");
    let env: BTreeMap<String, String> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = [
        ("PORT", "8000"),
        ("GREETING", "hello world"),
        ("QUOTE", "say \"hi\": $HOME"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want, "{web}");

    let worker = deployment(&ex.out_dir, "demo-worker.yaml", "demo", "worker", image);
    assert_eq!(worker["spec"]["replicas"], 1, "{worker}");
    let pod = &worker["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 2, "{worker}");
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        json!(["/bin/sh", "-c", "exec ./worker --queue default"]),
        "{worker}"
    );
    assert!(c.get("env").is_none(), "no env, no env list: {worker}");
}

#[test]
fn kubernetes_procfile_manifests_parse_as_yaml_with_the_dotenv() {
    let ex = export(
        "kubernetes",
        &fixture_config("procfile"),
        &["--app", "demo", "--image", "img"],
    );
    ex.out.assert_code(0);
    assert_eq!(ex.files.len(), 3, "{}", ex.out.context());
    let web = deployment(&ex.out_dir, "demo-web.yaml", "demo", "web", "img");
    let c = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!(["/bin/sh", "-c", "exec python3 -m http.server $PORT"]),
        "{web}"
    );
    assert_eq!(
        c["env"],
        json!([{"name": "PORT", "value": "5000"}, {"name": "GREETING", "value": "hello there"}]),
        "{web}"
    );
    let clock = deployment(&ex.out_dir, "demo-clock.yaml", "demo", "clock", "img");
    assert_eq!(
        clock["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["/bin/sh", "-c", "echo \"tick at 100%\"; sleep 60"]),
        "{clock}"
    );
}

#[test]
fn kubernetes_grace_period_is_never_shorter_than_stop_timeout() {
    let (_dir, config) = temp_config(
        "k8s-grace",
        "brood.toml",
        "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\nstop_timeout = \"1500ms\"\n",
    );
    let ex = export("kubernetes", &config, &["--app", "demo", "--image", "img"]);
    ex.out.assert_code(0);
    let web = deployment(&ex.out_dir, "demo-web.yaml", "demo", "web", "img");
    let grace = web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace * 1000 >= 1500,
        "stop_timeout 1500ms became terminationGracePeriodSeconds {grace}: {web}"
    );
}

// ---------------------------------------------------------------------------
// Refusals

fn assert_kubernetes_refuses(name: &str, config: &str, field: &str, value: &str) {
    let (_dir, path) = temp_config(name, "brood.toml", config);
    let ex = export("kubernetes", &path, &["--app", "demo", "--image", "img"]);
    ex.out
        .assert_code(2)
        .assert_stderr_contains(field)
        .assert_stderr_contains(value)
        .assert_stderr_contains("'web'");
    assert!(
        ex.files.is_empty(),
        "a refused export must write nothing: {:?}",
        ex.files.keys().collect::<Vec<_>>()
    );
    assert!(ex.out.stdout_str().is_empty(), "{}", ex.out.context());
}

#[test]
fn kubernetes_refuses_restart_never() {
    assert_kubernetes_refuses(
        "k8s-never",
        "[program.ok]\ncommand = [\"/bin/true\"]\n\n[program.web]\ncommand = [\"/bin/true\"]\nrestart = \"never\"\n",
        "restart",
        "never",
    );
}

#[test]
fn kubernetes_refuses_stop_signal_usr1() {
    assert_kubernetes_refuses(
        "k8s-usr1",
        "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\nstop_signal = \"USR1\"\n",
        "stop_signal",
        "USR1",
    );
}

// ---------------------------------------------------------------------------
// The app name

#[test]
fn kubernetes_probes_parse_as_yaml() {
    let ex = export(
        "kubernetes",
        &fixture_config("toml-probes"),
        &["--app", "demo", "--image", "img"],
    );
    ex.out.assert_code(0);
    let container = |program: &str| {
        let d = deployment(
            &ex.out_dir,
            &format!("demo-{program}.yaml"),
            "demo",
            program,
            "img",
        );
        d["spec"]["template"]["spec"]["containers"][0].clone()
    };
    let db = container("db");
    // ready = { tcp, timeout = 30s }: 30 attempts 1 s apart before a restart.
    assert_eq!(
        db["startupProbe"],
        json!({"tcpSocket": {"port": 5432}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 30})
    );
    assert_eq!(db["readinessProbe"]["tcpSocket"], json!({"port": 5432}));
    assert!(db.get("livenessProbe").is_none(), "{db}");
    let web = container("web");
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 2})
    );
    let queue = container("queue");
    assert!(queue.get("startupProbe").is_none() && queue.get("readinessProbe").is_none());
    // 1500ms rounds up to 2 s: a probe never gets less time than configured.
    assert_eq!(
        queue["livenessProbe"],
        json!({"exec": {"command": ["/usr/bin/env", "queue-ctl", "ping"]}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3})
    );
}

/// What a target cannot express is named on stderr, and the export still
/// succeeds: the program runs, only the readiness gate or the probe is lost.
#[test]
fn probes_without_an_equivalent_are_warned_by_name() {
    let config = fixture_config("toml-probes");
    let ex = export("kubernetes", &config, &["--app", "demo", "--image", "img"]);
    ex.out.assert_code(0);
    let err = ex.out.stderr_str();
    for want in [
        "program 'queue': ready = { notify = ... } has no equivalent in Kubernetes",
        "program 'cache': ready = { log = ... } has no equivalent in Kubernetes",
        "program 'db': the kubelet probes the pod's IP on port 5432, not 127.0.0.1",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    let ex = export("systemd", &config, &["--app", "demo"]);
    ex.out.assert_code(0);
    let err = ex.out.stderr_str();
    for want in [
        "program 'db': ready = { tcp = ... } has no equivalent in a unit",
        "program 'web': health = { http = ... } has no equivalent in a unit",
        "program 'cache': ready = { log = ... } has no equivalent in a unit",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    let queue = String::from_utf8_lossy(&ex.files["demo-queue@.service"]).into_owned();
    for line in [
        "Type=notify\n",
        "NotifyAccess=all\n",
        "TimeoutStartSec=20s\n",
        "WatchdogSec=10s\n",
    ] {
        assert!(queue.contains(line), "no {line:?} in:\n{queue}");
    }
}

#[test]
fn app_defaults_to_the_config_directorys_name() {
    let dir = TempDir::new("app-name");
    let shop = dir.join("shop");
    std::fs::create_dir(&shop).unwrap();
    let config = shop.join("brood.toml");
    std::fs::write(&config, "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\n").unwrap();
    let ex = export("systemd", &config, &[]);
    ex.out.assert_code(0);
    assert_eq!(
        ex.files.keys().collect::<Vec<_>>(),
        ["shop-web@.service", "shop.target"],
        "{}",
        ex.out.context()
    );
    let k8s = export("kubernetes", &config, &["--image", "img"]);
    k8s.out.assert_code(0);
    assert_eq!(
        k8s.files.keys().collect::<Vec<_>>(),
        ["shop-web.yaml"],
        "{}",
        k8s.out.context()
    );
}

// ---------------------------------------------------------------------------
// Process attributes (SPEC 17)

const ATTRS: &str = "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\n\
    user = \"daemon\"\ngroup = \"daemon\"\numask = \"027\"\nnice = 5\n\
    rlimits = { nofile = { soft = 1024, hard = 4096 }, core = \"infinity\", cpu = 60 }\n\
    clear_env = true\nstdin = \"null\"\n";

#[test]
fn systemd_maps_process_attributes_and_verifies() {
    ensure_systemd_analyze();
    let (_dir, config) = temp_config("attrs-systemd", "brood.toml", ATTRS);
    let ex = export("systemd", &config, &["--app", "demo"]);
    ex.out.assert_code(0);
    let unit = String::from_utf8_lossy(&ex.files["demo-web@.service"]).into_owned();
    let service: Vec<&str> = unit.lines().collect();
    for want in [
        "User=daemon",
        "Group=daemon",
        "UMask=0027",
        "Nice=5",
        "LimitNOFILE=1024:4096",
        "LimitCORE=infinity",
        "LimitCPU=60",
    ] {
        assert!(service.contains(&want), "no {want} in\n{unit}");
    }
    assert!(
        unit.contains("# clear_env = true: systemd starts every service with a clean environment"),
        "{unit}"
    );
    verify_all(&ex);
    // The same user from --user is written once; another one is refused.
    let same = export("systemd", &config, &["--app", "demo", "--user", "daemon"]);
    same.out.assert_code(0);
    let unit = String::from_utf8_lossy(&same.files["demo-web@.service"]).into_owned();
    assert_eq!(unit.matches("User=").count(), 1, "{unit}");
    let other = export("systemd", &config, &["--app", "demo", "--user", "nobody"]);
    other
        .out
        .assert_code(2)
        .assert_stderr_contains("program 'web': user = \"daemon\" in the config and --user nobody disagree");
    assert!(other.files.is_empty());
}

#[test]
fn kubernetes_maps_numeric_ids_to_the_security_context() {
    let (_dir, config) = temp_config(
        "attrs-k8s",
        "brood.toml",
        "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\nuser = 33\ngroup = 34\nnice = 5\nclear_env = true\n",
    );
    let ex = export("kubernetes", &config, &["--app", "demo", "--image", "img"]);
    ex.out
        .assert_code(0)
        .assert_stderr_contains("nice = 5 has no equivalent");
    let web = deployment(&ex.out_dir, "demo-web.yaml", "demo", "web", "img");
    let c = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"],
        json!({"runAsUser": 33, "runAsGroup": 34}),
        "{web}"
    );
}

#[test]
fn kubernetes_refuses_user_names_umask_and_rlimits_by_name() {
    let base = "[program.web]\ncommand = [\"/bin/sleep\", \"100\"]\n";
    assert_kubernetes_refuses(
        "k8s-user",
        &format!("{base}user = \"www-data\"\n"),
        "runAsUser",
        "www-data",
    );
    assert_kubernetes_refuses(
        "k8s-group",
        &format!("{base}group = \"www-data\"\n"),
        "runAsGroup",
        "www-data",
    );
    assert_kubernetes_refuses("k8s-umask", &format!("{base}umask = \"027\"\n"), "umask", "027");
    assert_kubernetes_refuses(
        "k8s-rlimits",
        &format!("{base}rlimits = {{ nofile = 10 }}\n"),
        "rlimits",
        "nofile",
    );
}
