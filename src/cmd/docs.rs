//! `plyfs man` and `plyfs completions SHELL`: the manual page plyfs(1) and
//! shell completions, generated from the same clap definitions that parse
//! the command line, so they cannot drift from it.

use clap::CommandFactory;

/// The whole command line as one clap command: the mount syntax with its
/// options, and every subcommand.
pub fn command() -> clap::Command {
    let mut cmd = crate::cli::Cli::command();
    for sub in super::Cli::command().get_subcommands() {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}

#[derive(clap::Args, Debug)]
/// Print the manual page plyfs(1) (roff) on stdout, or write every page
///
/// plyfs(1) covers mounting; each subcommand has its own page, plyfs-NAME(1).
/// Install them with: plyfs man --dir /usr/local/share/man/man1
pub struct ManArgs {
    /// Write plyfs.1 and plyfs-NAME.1 for every subcommand into DIR
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
/// Print shell completions on stdout
///
/// bash: plyfs completions bash > /etc/bash_completion.d/plyfs
/// zsh: plyfs completions zsh > /usr/local/share/zsh/site-functions/_plyfs
/// fish: plyfs completions fish > ~/.config/fish/completions/plyfs.fish
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

fn render(cmd: clap::Command) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| format!("cannot render the manual page: {e}"))?;
    Ok(out)
}

pub fn man(a: ManArgs) -> Result<i32, String> {
    let cmd = command();
    let Some(dir) = a.dir else {
        std::io::Write::write_all(&mut std::io::stdout(), &render(cmd)?)
            .map_err(|e| format!("cannot write the manual page: {e}"))?;
        return Ok(0);
    };
    let write = |name: String, page: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("plyfs-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("plyfs {}", sub.get_name()));
        write(format!("{name}.1"), render(page)?)?;
    }
    write("plyfs.1".into(), render(cmd)?)?;
    Ok(0)
}

pub fn completions(a: CompletionsArgs) -> Result<i32, String> {
    let mut cmd = command();
    // Into a buffer first: writing straight to stdout panics on EPIPE.
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "plyfs", &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out)
        .map_err(|e| format!("cannot write the completions: {e}"))?;
    Ok(0)
}
