//! Running a load test as several processes.
//!
//! A process may hold at most 20,000 open files here, and every socket is one, so a test of
//! more connections than that is spread over child processes: the parent re-executes its own
//! command line with `--worker N` appended, each child takes its share of the connections and
//! of the rate, and the parent merges their tallies.
//!
//! The processes move through the run together: each child does its setup, says so on stdout
//! (`reached registered`), and waits for a line on stdin before opening its sockets; likewise
//! before it starts sending (`reached connected`). At those two points the parent samples the
//! server's memory, so "memory before connecting" and "memory with every socket open" are
//! what they say even when the sockets come from many processes. A child ends by printing
//! `tally <json>`.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, Stdin};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::tally::Tally;
use super::{Args, Phase, Watch};

/// The parent's handle on one child.
struct Worker {
    index: usize,
    child: Child,
    input: ChildStdin,
    output: Lines<BufReader<ChildStdout>>,
}

/// What a child says on stdout.
#[derive(Debug, PartialEq)]
enum Report {
    Reached(Phase),
    Tally(Box<Tally>),
}

fn reached_line(phase: Phase) -> String {
    format!("reached {}", phase.name())
}

fn tally_line(tally: &Tally) -> anyhow::Result<String> {
    Ok(format!("tally {}", serde_json::to_string(tally).context("encoding the tally")?))
}

fn parse_report(line: &str) -> anyhow::Result<Report> {
    if let Some(json) = line.strip_prefix("tally ") {
        let tally = serde_json::from_str(json).context("reading a child's tally")?;
        return Ok(Report::Tally(Box::new(tally)));
    }
    line.strip_prefix("reached ")
        .and_then(Phase::from_name)
        .map(Report::Reached)
        .with_context(|| format!("unexpected line from a child: {line}"))
}

impl Worker {
    fn spawn(index: usize) -> anyhow::Result<Worker> {
        let program = std::env::current_exe().context("finding this program to re-execute")?;
        let mut child = Command::new(&program)
            .args(std::env::args_os().skip(1))
            .arg("--worker")
            .arg(index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // If the parent fails, its children must not run on against the server.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {index} ({})", program.display()))?;
        let input = child.stdin.take().expect("stdin is piped");
        let output = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        Ok(Worker { index, child, input, output })
    }

    async fn next_report(&mut self) -> anyhow::Result<Report> {
        match self.output.next_line().await {
            Ok(Some(line)) => parse_report(&line).with_context(|| format!("worker {}", self.index)),
            Ok(None) => {
                let status = self.child.wait().await;
                bail!("worker {} stopped early ({status:?})", self.index)
            }
            Err(error) => Err(error).with_context(|| format!("reading worker {}", self.index)),
        }
    }

    async fn proceed(&mut self) -> anyhow::Result<()> {
        self.input
            .write_all(b"go\n")
            .await
            .with_context(|| format!("telling worker {} to go on", self.index))
    }
}

/// Runs the test as `args.processes` children and merges what they measured.
pub async fn lead(args: &Args) -> anyhow::Result<(Tally, Watch)> {
    let mut workers = (0..args.processes).map(Worker::spawn).collect::<anyhow::Result<Vec<_>>>()?;
    let mut watch = Watch::default();
    for phase in Phase::ALL {
        for worker in &mut workers {
            match worker.next_report().await? {
                Report::Reached(reached) if reached == phase => {}
                other => bail!(
                    "worker {} said {other:?} while the others reached {}",
                    worker.index,
                    phase.name()
                ),
            }
        }
        watch.reached(args, phase).await?;
        for worker in &mut workers {
            worker.proceed().await?;
        }
    }
    let mut total = Tally::default();
    for worker in &mut workers {
        match worker.next_report().await? {
            Report::Tally(tally) => total.merge(*tally),
            other => bail!("worker {} said {other:?} instead of its tally", worker.index),
        }
        let status = worker.child.wait().await.context("waiting for a worker")?;
        if !status.success() {
            bail!("worker {} failed ({status})", worker.index);
        }
    }
    Ok((total, watch))
}

/// A child's side of the protocol: report each phase, then wait for the parent.
pub struct Follower {
    input: Lines<BufReader<Stdin>>,
}

impl Follower {
    pub fn new() -> Follower {
        Follower { input: BufReader::new(tokio::io::stdin()).lines() }
    }

    pub async fn reached(&mut self, phase: Phase) -> anyhow::Result<()> {
        println!("{}", reached_line(phase));
        match self.input.next_line().await.context("reading from the parent")? {
            Some(_) => Ok(()),
            None => bail!("the parent process went away"),
        }
    }

    pub fn finish(self, tally: &Tally) -> anyhow::Result<()> {
        println!("{}", tally_line(tally)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_report_in_lines_the_parent_understands() {
        for phase in Phase::ALL {
            assert_eq!(parse_report(&reached_line(phase)).unwrap(), Report::Reached(phase));
        }
        let tally = Tally { connected: 5000, sent: 12, ..Tally::default() };
        assert_eq!(
            parse_report(&tally_line(&tally).unwrap()).unwrap(),
            Report::Tally(Box::new(tally))
        );
        assert!(parse_report("reached nowhere").is_err());
        assert!(parse_report("hello").is_err());
    }
}
