//! The embedded default backend: redb, a transactional database in one file. Every commit is
//! synced before it returns.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{ChangeSet, Storage, StorageError};

/// The entities table: canonical uid text -> the entity as written (Cedar JSON).
const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
/// Store metadata: `revision` -> u64.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Text metadata: `schema` -> the schema version the stored entities were validated with.
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");
const SCHEMA: &str = "schema";
/// Text metadata: `source` -> the id of the shared source this database is a copy of.
const SOURCE: &str = "source";
/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// redb-backed storage: one file.
pub struct RedbStorage {
    path: PathBuf,
    db: Database,
}

impl RedbStorage {
    /// Opens (or creates) the database file, recovering from an unclean shutdown if needed.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError {
            path: path.to_path_buf(),
            message: e.to_string(),
            in_use: false,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        // The entity index lives in memory; redb's page cache only needs to serve writes and
        // the start-up scan, not hold the whole file (its default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError {
                    in_use: true,
                    ..err(&"the database is in use by another process (a running server holds it)")
                },
                e => err(&e),
            })?;
        let storage = RedbStorage {
            path: path.to_path_buf(),
            db,
        };
        // Create the tables so that readers never meet a missing table (a new file only: a
        // write transaction on a large file costs a sync).
        if storage.tables_exist()? {
            return Ok(storage);
        }
        let txn = storage.db.begin_write().map_err(|e| storage.err(e))?;
        txn.open_table(ENTITIES).map_err(|e| storage.err(e))?;
        txn.open_table(META).map_err(|e| storage.err(e))?;
        txn.open_table(META_TEXT).map_err(|e| storage.err(e))?;
        txn.commit().map_err(|e| storage.err(e))?;
        Ok(storage)
    }

    fn tables_exist(&self) -> Result<bool, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        for name in ["entities", "meta", "meta_text"] {
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
            match txn.open_untyped_table(def) {
                Ok(_) => {}
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(true)
    }

    fn write(&self, changes: &ChangeSet, durability: redb::Durability) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(durability).map_err(|e| self.err(e))?;
        // Keeps recovery after a crash quick (no full scan of the allocator state).
        txn.set_quick_repair(true);
        {
            let mut entities = txn.open_table(ENTITIES).map_err(|e| self.err(e))?;
            for (uid, json) in &changes.puts {
                entities
                    .insert(uid.as_str(), json.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for uid in &changes.deletes {
                entities.remove(uid.as_str()).map_err(|e| self.err(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(REVISION, changes.revision)
                .map_err(|e| self.err(e))?;
            let mut text = txn.open_table(META_TEXT).map_err(|e| self.err(e))?;
            match &changes.schema {
                Some(schema) => {
                    text.insert(SCHEMA, schema.as_str())
                        .map_err(|e| self.err(e))?;
                }
                // A writer that did not validate against a known schema: the next start
                // validates everything again.
                None => {
                    text.remove(SCHEMA).map_err(|e| self.err(e))?;
                }
            }
            if let Some(source) = &changes.source {
                text.insert(SOURCE, source.as_str())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn text(&self, key: &str) -> Result<Option<String>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = match txn.open_table(META_TEXT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = meta.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_string()))
    }

    fn err(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError {
            path: self.path.clone(),
            message: e.to_string(),
            in_use: false,
        }
    }
}

impl Storage for RedbStorage {
    fn revision(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        let rev = meta.get(REVISION).map_err(|e| self.err(e))?;
        Ok(rev.map(|v| v.value()).unwrap_or(0))
    }

    fn schema(&self) -> Result<Option<String>, StorageError> {
        self.text(SCHEMA)
    }

    fn source(&self) -> Result<Option<String>, StorageError> {
        self.text(SOURCE)
    }

    fn apply(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        self.write(changes, redb::Durability::Immediate)
    }

    fn apply_relaxed(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        self.write(changes, redb::Durability::None)
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    fn count(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        match txn.open_table(ENTITIES) {
            Ok(table) => table.len().map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }

    fn scan(&self, visit: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<(), StorageError> {
        // The scan walks the table in key order, which is not the file's order: on a cold disk
        // that is one small scattered read per page. Asked first, the kernel reads the whole
        // file ahead in file order (on its own thread: the call itself can take a while), so
        // the scan finds its pages in memory. Only advice: a failure changes nothing.
        let path = self.path.clone();
        let _ = std::thread::Builder::new()
            .name("db-readahead".into())
            .spawn(move || {
                if let Ok(file) = std::fs::File::open(&path) {
                    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
                }
            });
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let revision = txn
            .open_table(META)
            .map_err(|e| self.err(e))?
            .get(REVISION)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn.open_table(ENTITIES).map_err(|e| self.err(e))?;
        for item in table.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if !visit(revision, v.value()) {
                break;
            }
        }
        Ok(())
    }
}
