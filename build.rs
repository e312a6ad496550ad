//! Sets `WSGATE_COMMIT` for the crate (the `commit` label of
//! `wsgate_build_info`): `git rev-parse --short=12 HEAD` when the sources are
//! a git checkout, else the `WSGATE_COMMIT` environment variable (the
//! Dockerfile passes it as a build argument: its context has no `.git`),
//! else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Only what can be a label value: hex digits and the like, at most 40.
fn clean(commit: &str) -> Option<String> {
    let commit = commit.trim();
    let ok = !commit.is_empty()
        && commit.len() <= 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then(|| commit.to_string())
}

/// A path that does not exist would make cargo rerun this on every build.
fn rerun_if_changed(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WSGATE_COMMIT");
    let from_git = git(&["rev-parse", "--short=12", "HEAD"]).and_then(|c| clean(&c));
    if from_git.is_some() {
        // A new commit or checkout changes HEAD or the branch it names
        // (in a worktree too: git resolves the paths).
        for path in ["HEAD", "packed-refs"] {
            rerun_if_changed(git(&["rev-parse", "--git-path", path]));
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            rerun_if_changed(git(&["rev-parse", "--git-path", &branch]));
        }
    }
    let commit = from_git
        .or_else(|| std::env::var("WSGATE_COMMIT").ok().and_then(|c| clean(&c)))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WSGATE_COMMIT={commit}");
}
