//! Shell completions and man pages, generated from the same clap definitions as the parser, so
//! they never drift from what the CLI accepts.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::Cli;

/// `switchyard completion SHELL`: the completion script on standard output.
pub fn completion(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "switchyard", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `switchyard man --dir DIR`: `switchyard.1`, and `switchyard-<verb>[-<sub>].1` for every
/// command, in `dir`.
pub fn man(dir: &Path) -> ExitCode {
    match write_pages(dir) {
        Ok(n) => {
            println!("{n} man pages written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_pages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut n = 0;
    let mut todo = vec![(String::from("switchyard"), cmd)];
    while let Some((name, cmd)) = todo.pop() {
        let cmd = cmd.name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        n += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            todo.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
    }
    Ok(n)
}
