//! The raw loop of the file bus: plain file I/O, no taskbus. Fill appends the tasks to a file in
//! writes of 1024 lines; the drain reads up to C lines, parses each and writes its done task, appends
//! the C done lines to the done file in one `write(2)` (the "confirmation": the lines are in the page
//! cache, as the file bus's `send` with `fsync=false`), then appends the offset reached to a journal
//! (the "ack"). No locks, no leases: the ceiling of a single process that owns its files.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;

use super::measure::{CpuClock, FirstSeen, Measured};
use super::plan::Point;
use super::target::Target;
use super::taskbus_loop::FILL_IN_FLIGHT;
use super::tasks;

/// Fills a new file with `point.n` tasks and drains it C lines at a time.
pub(crate) async fn run(
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let dir = target
        .dir
        .as_ref()
        .context("the file bus target has no directory")?
        .join("raw");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let file = |label: &str| dir.join(format!("{}.jsonl", target.raw_name(label)));
    let files = Files {
        input: file("in"),
        done: file("done"),
        journal: file("journal"),
    };
    let bar = bar.clone();
    bar.set_length(point.n as u64);
    tokio::task::spawn_blocking(move || {
        let fill = fill(&files.input, point.n)
            .with_context(|| format!("cannot fill {}", files.input.display()))?;
        let cpu = CpuClock::start(None);
        let drain = drain(&files, point, &bar)?;
        Ok(Measured {
            fill,
            drain,
            duplicates: 0,
            cpu: cpu.stop(),
        })
    })
    .await
    .context("the raw file loop panicked")?
}

struct Files {
    input: PathBuf,
    done: PathBuf,
    journal: PathBuf,
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} to append", path.display()))
}

/// Appends `n` tasks, 1024 lines per write.
fn fill(path: &Path, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut file = append(path)?;
    let mut buf = Vec::with_capacity(FILL_IN_FLIGHT * 300);
    for start in (0..n).step_by(FILL_IN_FLIGHT) {
        buf.clear();
        for i in start..(start + FILL_IN_FLIGHT).min(n) {
            tasks::task(i).write_json(&mut buf);
            buf.push(b'\n');
        }
        file.write_all(&buf)?;
    }
    Ok(started.elapsed())
}

/// Reads, parses and answers C lines at a time until `n` are done; returns the drain time.
fn drain(files: &Files, point: Point, bar: &ProgressBar) -> anyhow::Result<Duration> {
    let mut input = BufReader::new(
        File::open(&files.input)
            .with_context(|| format!("cannot open {}", files.input.display()))?,
    );
    let (mut done_file, mut journal) = (append(&files.done)?, append(&files.journal)?);
    let first = FirstSeen::default();
    let (mut line, mut batch, mut ack) = (Vec::new(), Vec::new(), Vec::new());
    let (mut offset, mut done) = (0usize, 0usize);
    while done < point.n {
        batch.clear();
        let mut taken = 0;
        while taken < point.c && done + taken < point.n {
            line.clear();
            let read = input.read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            first.mark();
            offset += read;
            let task = line.strip_suffix(b"\n").unwrap_or(&line);
            batch.extend(tasks::done_json(task).context("a raw file line is not a task")?);
            batch.push(b'\n');
            taken += 1;
        }
        anyhow::ensure!(
            taken > 0,
            "{} ended after {done} of {} tasks",
            files.input.display(),
            point.n
        );
        done_file.write_all(&batch)?;
        ack.clear();
        writeln!(ack, "acked {offset}")?;
        journal.write_all(&ack)?;
        done += taken;
        bar.inc(taken as u64);
    }
    Ok(first.elapsed())
}
