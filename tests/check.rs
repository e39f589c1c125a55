//! The CLI: `rampart check` on valid and broken configurations (every problem as
//! `FILE:LINE:COL: key.path: reason`, exit 64), `rampart run`'s start-up failures (one line on
//! stderr; 64 for the configuration, certificates included, 1 for the rest) and
//! `rampart version`.
//!
//! Fixtures under `tests/fixtures/broken/` mark each offending line with `# expect: KEY.PATH`;
//! the problem for that key must be reported at that line.

mod common;

use std::path::{Path, PathBuf};

use common::rampart_command;

/// `rampart check -c PATH`: exit code and stdout + stderr.
fn check(path: &Path) -> (Option<i32>, String) {
    let output = rampart_command(&["check", "-c"])
        .arg(path)
        .output()
        .expect("the binary runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// A reported problem: `FILE:LINE:COL: key.path: reason`.
#[derive(Debug)]
struct Reported {
    line: usize,
    column: usize,
    key: String,
    reason: String,
}

/// The problem lines about `file` in `output`; every other non-empty line is returned as `Err`.
fn problems(file: &Path, output: &str) -> Vec<Result<Reported, String>> {
    let prefix = format!("{}:", file.display());
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parse = || {
                let rest = line.strip_prefix(&prefix)?;
                let (line_no, rest) = rest.split_once(':')?;
                let (column, rest) = rest.split_once(": ")?;
                let (key, reason) = rest.split_once(": ")?;
                Some(Reported {
                    line: line_no.parse().ok()?,
                    column: column.parse().ok()?,
                    key: key.to_owned(),
                    reason: reason.to_owned(),
                })
            };
            parse().ok_or_else(|| line.to_owned())
        })
        .collect()
}

/// What a fixture says must be reported, at which line (and column, when given).
#[derive(Debug)]
struct Expected {
    line: usize,
    column: Option<usize>,
    key: String,
}

/// The expectations written in a fixture, in either of two forms: a trailing `# expect: KEY`
/// on the offending line, or `(expect LINE:COL KEY` in a comment anywhere.
fn expectations(text: &str) -> Vec<Expected> {
    let mut expected = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some((_, key)) = line.split_once("# expect: ") {
            expected.push(Expected {
                line: index + 1,
                column: None,
                key: key.trim().to_owned(),
            });
        }
        if let Some((_, rest)) = line.split_once("(expect ") {
            let mut words = rest.split_whitespace();
            let (Some(position), Some(key)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((line, column)) = position.split_once(':') else {
                continue;
            };
            let (Ok(line), Ok(column)) = (line.parse(), column.parse()) else {
                continue;
            };
            let key = key.trim_end_matches([',', ')', '.']).to_owned();
            expected.push(Expected {
                line,
                column: Some(column),
                key,
            });
        }
    }
    expected
}

fn fixture_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_example_config() {
    let example = manifest_dir().join("config/rampart.yaml");
    let (code, output) = check(&example);
    assert_eq!(code, Some(0), "{}:\n{output}", example.display());
}

#[test]
fn check_reports_each_broken_config_with_file_line_and_key() {
    let dirs = [
        manifest_dir().join("config/broken"),
        manifest_dir().join("tests/fixtures/broken"),
    ];
    let mut checked = 0;
    for file in dirs
        .iter()
        .filter(|d| d.is_dir())
        .flat_map(|d| fixture_files(d))
    {
        let text = std::fs::read_to_string(&file).expect("fixture is readable");
        let (code, output) = check(&file);
        assert_eq!(
            code,
            Some(64),
            "{} should be rejected with exit 64:\n{output}",
            file.display()
        );
        let reported = problems(&file, &output);
        assert!(
            !reported.is_empty(),
            "{}: no problem reported",
            file.display()
        );
        let line_count = text.lines().count().max(1);
        for problem in &reported {
            let problem = problem.as_ref().unwrap_or_else(|line| {
                panic!(
                    "{}: not `FILE:LINE:COL: key.path: reason`: {line:?}\nfull output:\n{output}",
                    file.display()
                )
            });
            assert!(
                (1..=line_count).contains(&problem.line),
                "{}: line out of range: {problem:?}",
                file.display()
            );
            assert!(problem.column >= 1, "{}: {problem:?}", file.display());
            assert!(
                !problem.key.is_empty() && !problem.reason.is_empty(),
                "{}: {problem:?}",
                file.display()
            );
        }
        let expected = expectations(&text);
        for expected in &expected {
            assert!(
                reported.iter().flatten().any(|p| p.line == expected.line
                    && expected.column.is_none_or(|c| c == p.column)
                    && p.key == expected.key),
                "{}: expected a problem for {expected:?}; got:\n{output}",
                file.display()
            );
        }
        assert!(
            !expected.is_empty(),
            "{}: say what the fixture expects (`# expect: KEY`)",
            file.display()
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} broken configs found");
}

#[test]
fn check_reports_every_problem_of_a_file_at_once() {
    let file = manifest_dir().join("tests/fixtures/broken/many-problems.yaml");
    let (code, output) = check(&file);
    assert_eq!(code, Some(64), "{output}");
    let reported: Vec<Reported> = problems(&file, &output).into_iter().flatten().collect();
    let expected = expectations(&std::fs::read_to_string(&file).expect("fixture"));
    // One run reports them all: nothing stops at the first problem.
    assert_eq!(
        reported.len(),
        expected.len(),
        "expected {expected:#?}\ngot:\n{output}"
    );
    for expected in &expected {
        assert!(
            reported
                .iter()
                .any(|p| p.line == expected.line && p.key == expected.key),
            "missing {expected:?} in:\n{output}"
        );
    }
    let lines: Vec<usize> = reported.iter().map(|p| p.line).collect();
    assert!(
        lines.is_sorted(),
        "problems are listed in file order: {lines:?}"
    );
}

#[test]
fn check_suggests_the_closest_key_for_a_typo() {
    let file = manifest_dir().join("tests/fixtures/broken/unknown-key.yaml");
    let (code, output) = check(&file);
    assert_eq!(code, Some(64), "{output}");
    let reported: Vec<Reported> = problems(&file, &output).into_iter().flatten().collect();
    assert!(
        reported
            .iter()
            .any(|p| p.key == "sites[0].upstream" && p.reason.contains("upstreams")),
        "no did-you-mean for `upstream`:\n{output}"
    );
}

#[test]
fn check_resolves_relative_cert_paths_against_the_config_directory() {
    let env = common::Env::new();
    env.leaf("a", &["a.test"]);
    let config = env.write_config(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem, key: a.key }\n    upstreams: [http://127.0.0.1:9000]\n",
    );
    // Run from elsewhere: the paths must not depend on the working directory.
    let output = rampart_command(&["check", "-c"])
        .arg(&config)
        .current_dir("/")
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
}

#[test]
fn check_rejects_a_key_that_does_not_match_its_certificate() {
    let env = common::Env::new();
    env.leaf("a", &["a.test"]);
    env.leaf("other", &["a.test"]);
    let config = env.write_config(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem, key: other.key }\n    upstreams: [http://127.0.0.1:9000]\n",
    );
    let (code, output) = check(&config);
    assert_eq!(code, Some(64), "{output}");
    let reported: Vec<Reported> = problems(&config, &output).into_iter().flatten().collect();
    assert!(
        reported
            .iter()
            .any(|p| p.line == 7 && p.key.starts_with("sites[0].tls")),
        "{output}"
    );
}

#[test]
fn version_prints_the_package_version() {
    let output = rampart_command(&["version"])
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

/// `rampart run -c PATH`: exit code and stderr.
fn run(path: &Path) -> (Option<i32>, String) {
    let output = rampart_command(&["run", "-c"])
        .arg(path)
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `run.yaml` in `env`: one site with certificate `stem`.pem, served on `https`.
fn run_config(env: &common::Env, https: std::net::SocketAddr, stem: &str) -> std::path::PathBuf {
    env.write(
        "run.yaml",
        &format!(
            "listen: {{ https: \"{https}\", http: \"{}\" }}
storage: storage
sites:
  - hosts: [a.test]
    tls: {{ cert: {stem}.pem, key: {stem}.key }}
    upstreams: [http://127.0.0.1:9]
",
            common::refused_addr()
        ),
    )
}

#[test]
fn run_on_a_port_in_use_says_so_in_one_line_and_exits_1() {
    let env = common::Env::new();
    env.leaf("a", &["a.test"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let config = run_config(&env, taken.local_addr().expect("bound"), "a");
    let (code, stderr) = run(&config);
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("rampart: cannot listen on 127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn run_with_an_unreadable_certificate_exits_64_naming_the_file_and_line() {
    let env = common::Env::new();
    let config = run_config(&env, common::refused_addr(), "missing");
    let (code, stderr) = run(&config);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("run.yaml:5:") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
