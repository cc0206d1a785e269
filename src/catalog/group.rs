//! Group commit: concurrent small writes (a recording's row, an audit entry) share one
//! transaction and so one `synchronous=FULL` commit, instead of queueing for the connection and
//! paying a WAL fsync each. Each write runs in its own savepoint, so one that fails is rolled
//! back alone; none is acknowledged before the commit that carries it has returned.
//!
//! The scheme is the classic leader/follower one on the connection mutex: a writer queues its
//! job, then takes the connection; whoever holds it runs every queued job, commits once, and
//! hands each job its outcome. A writer that gets the connection and finds its job already run
//! only waits for its answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use rusqlite::{Transaction, TransactionBehavior};

use crate::catalog::{Catalog, CatalogError};

/// Most jobs one transaction carries; the rest wait for the next commit.
const MAX_GROUP: usize = 64;

/// A write, run in the shared transaction; it keeps its own value for its caller.
type Work = Box<dyn FnOnce(&Transaction<'_>) -> Result<(), CatalogError> + Send>;

/// Where a job's outcome goes once the commit that carries it has returned.
type Done = SyncSender<Result<(), CatalogError>>;

/// One write waiting for a commit.
pub(super) struct Job {
    work: Work,
    done: Done,
    /// Set when a writer takes the job out of the queue to commit it.
    taken: Arc<AtomicBool>,
}

/// The queue of jobs waiting for the connection.
pub(super) type Queue = Arc<Mutex<Vec<Job>>>;

impl Catalog {
    /// Runs `work` in a transaction shared with the other writes queued at the same time; returns
    /// once that transaction is committed (or `work`'s own error, with its changes rolled back).
    pub(crate) fn write_grouped<T, F>(&self, work: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, CatalogError> + Send + 'static,
    {
        let value: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&value);
        let (done, answer) = sync_channel(1);
        let job = Job {
            work: Box::new(move |tx| {
                let produced = work(tx)?;
                *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(produced);
                Ok(())
            }),
            done,
            taken: Arc::new(AtomicBool::new(false)),
        };
        let taken = Arc::clone(&job.taken);
        self.queue().push(job);
        self.run_queued(&taken);
        wait(&answer)?;
        let produced = value
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        produced
            .ok_or_else(|| CatalogError::Task("group commit: a committed job left no value".into()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.group
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the connection and commits what is queued, group by group, until our own job
    /// (`mine`) has been taken, by us or by the writer who held the connection before us. A job
    /// is taken before its own writer leaves, so none is left behind; and no writer keeps serving
    /// others once its own job is on its way.
    fn run_queued(&self, mine: &AtomicBool) {
        let mut conn = self.lock();
        while !mine.load(Ordering::Acquire) {
            let jobs: Vec<Job> = {
                let mut queue = self.queue();
                let n = queue.len().min(MAX_GROUP);
                queue.drain(..n).collect()
            };
            for job in &jobs {
                job.taken.store(true, Ordering::Release);
            }
            commit_group(&mut conn, jobs);
        }
    }
}

/// The answer to one job.
fn wait(answer: &Receiver<Result<(), CatalogError>>) -> Result<(), CatalogError> {
    answer.recv().unwrap_or_else(|_| {
        Err(CatalogError::Task(
            "group commit: the job was dropped".into(),
        ))
    })
}

/// Runs `jobs` in one transaction, each in a savepoint, commits, and answers each.
fn commit_group(conn: &mut rusqlite::Connection, jobs: Vec<Job>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            for job in jobs {
                let _ = job.done.send(Err(CatalogError::Sql {
                    what: "begin",
                    source: replicate(&error),
                }));
            }
            return;
        }
    };
    let mut ran: Vec<(Done, Result<(), CatalogError>)> = Vec::with_capacity(jobs.len());
    let mut broken: Option<rusqlite::Error> = None;
    for job in jobs {
        if let Some(error) = &broken {
            ran.push((
                job.done,
                Err(CatalogError::Sql {
                    what: "group commit",
                    source: replicate(error),
                }),
            ));
            continue;
        }
        if let Err(error) = run_cached(&tx, "SAVEPOINT grouped") {
            broken = Some(error);
            ran.push((
                job.done,
                Err(CatalogError::Task("group commit: savepoint failed".into())),
            ));
            continue;
        }
        let outcome = (job.work)(&tx);
        let closed = match &outcome {
            Ok(()) => run_cached(&tx, "RELEASE grouped"),
            // A failed write is undone alone. Some errors (a full disk, I/O) make SQLite roll
            // back the whole transaction: then the savepoint is gone and so is the group.
            Err(_) => run_cached(&tx, "ROLLBACK TO grouped")
                .and_then(|()| run_cached(&tx, "RELEASE grouped")),
        };
        if let Err(error) = closed {
            broken = Some(error);
        }
        ran.push((job.done, outcome));
    }
    let committed = match broken {
        Some(error) => {
            drop(tx);
            Err(error)
        }
        None => tx.commit(),
    };
    for (done, outcome) in ran {
        let answer = match (&committed, outcome) {
            (Ok(()), outcome) => outcome,
            // Nothing of the group is in the database: even the jobs that ran fine fail.
            (Err(error), Ok(())) => Err(CatalogError::Sql {
                what: "commit",
                source: replicate(error),
            }),
            (Err(_), Err(own)) => Err(own),
        };
        let _ = done.send(answer);
    }
}

/// Runs one statement without rows from the connection's statement cache: the savepoint
/// statements run twice per grouped write, and parsing them each time cost more than the write.
fn run_cached(tx: &Transaction<'_>, statement: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(statement)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
}

/// A copy of a SQLite error for each job of a failed group (`rusqlite::Error` is not `Clone`);
/// the result code, which tells a full disk from the rest, is kept.
fn replicate(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sql;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        (dir, catalog)
    }

    fn count(catalog: &Catalog) -> i64 {
        catalog
            .read(|conn| {
                conn.query_row("SELECT count(*) FROM grouped_test", [], |row| row.get(0))
                    .map_err(sql("count"))
            })
            .unwrap()
    }

    #[test]
    fn concurrent_writes_all_commit_in_groups_and_a_failing_one_is_rolled_back_alone() {
        let (_dir, catalog) = catalog();
        catalog
            .write(|tx| {
                tx.execute_batch("CREATE TABLE grouped_test (n INTEGER PRIMARY KEY)")
                    .map_err(sql("create"))
            })
            .unwrap();
        let threads: Vec<_> = (0..150i64)
            .map(|n| {
                let catalog = catalog.clone();
                std::thread::spawn(move || {
                    catalog.write_grouped(move |tx| {
                        tx.execute("INSERT INTO grouped_test (n) VALUES (?1)", [n])
                            .map_err(sql("insert"))?;
                        if n % 10 == 3 {
                            // Fails after its insert: the insert must not survive.
                            return Err(CatalogError::Corrupt {
                                what: format!("job {n}"),
                            });
                        }
                        Ok(n * 2)
                    })
                })
            })
            .collect();
        let mut failed = 0;
        for (n, thread) in threads.into_iter().enumerate() {
            match thread.join().unwrap() {
                Ok(value) => assert_eq!(value, n as i64 * 2),
                Err(CatalogError::Corrupt { what }) => {
                    assert_eq!(what, format!("job {n}"));
                    failed += 1;
                }
                Err(other) => panic!("job {n}: {other}"),
            }
        }
        assert_eq!(failed, 15);
        assert_eq!(count(&catalog), 135);
    }

    #[test]
    fn a_constraint_error_fails_only_its_job() {
        let (_dir, catalog) = catalog();
        catalog
            .write(|tx| {
                tx.execute_batch(
                    "CREATE TABLE grouped_test (n INTEGER PRIMARY KEY);
                     INSERT INTO grouped_test (n) VALUES (1);",
                )
                .map_err(sql("create"))
            })
            .unwrap();
        let duplicate = catalog.write_grouped(|tx| {
            tx.execute("INSERT INTO grouped_test (n) VALUES (1)", [])
                .map_err(sql("insert"))
        });
        assert!(matches!(duplicate, Err(CatalogError::Sql { .. })));
        let fresh = catalog.write_grouped(|tx| {
            tx.execute("INSERT INTO grouped_test (n) VALUES (2)", [])
                .map_err(sql("insert"))
        });
        assert_eq!(fresh.unwrap(), 1);
        assert_eq!(count(&catalog), 2);
    }
}
