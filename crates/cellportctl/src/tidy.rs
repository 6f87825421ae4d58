//! Every command line of the workspace explains itself: each flag, positional argument and
//! subcommand has one line of help, and no help points at a document that
//! is not in the repository (the help refers to `docs/reference.md` instead of the SPEC).

use clap::CommandFactory;

/// What is wrong with `cmd`'s help and its subcommands', as `path: problem` lines.
fn problems(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
    let mut check = |what: String, help: Option<String>| match help {
        None => found.push(format!("{what}: no help")),
        Some(help) if help.trim().is_empty() => found.push(format!("{what}: no help")),
        Some(help) => {
            if help.contains("SPEC") {
                found.push(format!("{what}: help mentions the SPEC: {help}"));
            }
            if help.contains('\n') {
                found.push(format!("{what}: help is more than one line: {help}"));
            }
        }
    };
    check(path.to_owned(), cmd.get_about().map(|a| a.to_string()));
    if let Some(long) = cmd.get_long_about() {
        check(
            format!("{path} (long)"),
            Some(long.to_string().replace('\n', " ")),
        );
    }
    for arg in cmd.get_arguments() {
        let name = arg
            .get_long()
            .map_or_else(|| arg.get_id().to_string(), |long| format!("--{long}"));
        let what = format!("{path} {name}");
        check(what, arg.get_help().map(|h| h.to_string()));
    }
    for sub in cmd.get_subcommands() {
        problems(sub, &format!("{path} {}", sub.get_name()), found);
    }
}

#[test]
fn every_flag_and_subcommand_has_one_line_of_help_and_none_mentions_the_spec() {
    let commands = [
        crate::Cli::command(),
        cellport_api::cli::Args::command(),
        cellport_gateway::cli::Args::command(),
        cellport_worker::cli::Args::command(),
    ];
    let mut found = Vec::new();
    for mut cmd in commands {
        // Built as parsing builds it: globals propagated, help and version flags added.
        cmd.build();
        let name = cmd.get_name().to_owned();
        problems(&cmd, &name, &mut found);
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
