//! The fences table (`geofence.postgres`), which this crate owns: its
//! schema (`sql/fence_table.sql`) and the query that reads it
//! (`sql/select_fences.sql`). `{table}` in the SQL stands for the
//! configured table as a quoted identifier.

use fleetpipe_postgres::Postgres;

use super::LoadError;
use crate::{FenceRow, FenceSet, PostgresFencesConfig};

/// Creates the table if it does not exist.
const CREATE: &str = include_str!("../../sql/fence_table.sql");
/// Reads every row, ordered by id.
const SELECT: &str = include_str!("../../sql/select_fences.sql");

/// Name of the PostgreSQL connection when the URL sets none.
const APPLICATION_NAME: &str = "fleetpipe-geofences";

/// The fences table of `[geofence.postgres]`: its connection settings
/// (URL, TLS, and the defaults every fleetpipe connection has: a connect
/// timeout, the application name `fleetpipe-geofences`) and its name.
#[derive(Debug, Clone)]
pub struct FenceTable {
    postgres: Postgres,
    /// As configured, for messages.
    table: String,
    /// As a quoted identifier, for SQL.
    quoted: String,
}

impl FenceTable {
    /// Checks the settings and reads the TLS files; connects to nothing.
    ///
    /// # Errors
    ///
    /// [`LoadError::Postgres`]: an invalid URL or TLS setting, an
    /// unreadable TLS file (the message names the key).
    pub fn new(config: &PostgresFencesConfig) -> Result<Self, LoadError> {
        let postgres = Postgres::new(
            "geofence.postgres",
            &config.url,
            &config.tls,
            APPLICATION_NAME,
        )
        .map_err(|source| LoadError::Postgres {
            table: config.table.clone(),
            source,
        })?;
        Ok(Self {
            postgres,
            table: config.table.clone(),
            quoted: config.quoted_table(),
        })
    }

    /// Creates the table as `sql/fence_table.sql` describes it, unless it
    /// exists. The service never calls this: a missing table is a
    /// configuration error, not something to paper over at start.
    ///
    /// # Errors
    ///
    /// [`LoadError::Connect`], [`LoadError::Create`].
    pub async fn create(&self) -> Result<(), LoadError> {
        let (client, connection) = self.connect().await?;
        let created = client
            .batch_execute(&CREATE.replace("{table}", &self.quoted))
            .await;
        drop(client);
        let _ = connection.await;
        created.map_err(|source| LoadError::Create {
            table: self.table.clone(),
            source,
        })
    }

    /// Every row, ordered by id, as a [`FenceSet`].
    ///
    /// # Errors
    ///
    /// [`LoadError::Connect`], [`LoadError::Query`], [`LoadError::Column`]
    /// (a column of an unexpected type), [`LoadError::Row`] (a row that is
    /// not a valid fence, named by its position and id).
    pub async fn read(&self) -> Result<FenceSet, LoadError> {
        let (client, connection) = self.connect().await?;
        let rows = client
            .query(&SELECT.replace("{table}", &self.quoted), &[])
            .await;
        drop(client);
        let _ = connection.await;
        let rows = rows.map_err(|source| LoadError::Query {
            table: self.table.clone(),
            source,
        })?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(FenceRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    speed_limit_kmh: r.try_get(3)?,
                    dwell_s: r.try_get(4)?,
                    arrival: r.try_get(5)?,
                    radius_m: r.try_get(6)?,
                    geometry: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|source| LoadError::Column {
                table: self.table.clone(),
                source,
            })?;
        let table = self.table.clone();
        super::blocking("parsing the table", move || {
            FenceSet::from_rows(rows).map_err(|source| LoadError::Row { table, source })
        })
        .await
    }

    async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), LoadError> {
        self.postgres
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                table: self.table.clone(),
                source,
            })
    }
}
