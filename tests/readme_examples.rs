//! Runs every `sh` command of README.md against a live broker, so the walkthrough cannot rot.

mod common;

use std::process::Command;

/// The `sh` code blocks of the README, one command per line, in order.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => commands.push(l.to_string()),
            _ => {}
        }
    }
    commands
}

#[test]
fn every_readme_command_works_as_written() {
    let broker = common::TestBroker::start();
    let cwd = tempfile::tempdir().unwrap();
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "the walkthrough lost its examples: {commands:?}"
    );
    for command in &commands {
        let runnable = command.replace("http://localhost:8080", &broker.url);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {runnable}"))
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        // curl's exit 28 is the --max-time the SSE example asks for.
        let expected_exit = code == Some(0) || (command.contains("--max-time") && code == Some(28));
        assert!(
            expected_exit,
            "`{command}` exited {code:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains("offset=999999") {
            assert!(
                stdout.contains("\"code\":\"offset_out_of_range\""),
                "`{command}` printed {stdout}"
            );
            continue;
        }
        if command.starts_with("curl") || command.contains("| curl") {
            assert!(!stdout.trim().is_empty(), "`{command}` printed nothing");
            assert!(
                !stdout.contains("\"code\":"),
                "`{command}` answered a problem: {stdout}"
            );
        }
        if command.contains("/stream") {
            assert!(
                stdout.contains("event: record") && stdout.contains("id: 0"),
                "`{command}` printed {stdout}"
            );
        }
    }
}
