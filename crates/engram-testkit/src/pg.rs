//! A fresh Postgres database per test, on the throwaway server that
//! `scripts/pg run` starts (it exports `ENGRAM_TEST_PG_URL`). `make test`
//! runs the test suites that way.

/// The environment variable holding the admin URL of the test server.
pub const URL_VAR: &str = "ENGRAM_TEST_PG_URL";

/// The test server's admin URL. Panics with instructions when unset: the
/// Postgres cases must run, not silently pass.
pub fn server_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set: run the tests through `make test`, or wrap cargo in \
             `scripts/pg run cargo test …`, which starts a throwaway Postgres with pgvector"
        )
    })
}

/// Creates an empty database on the test server and returns its URL.
/// Databases are left behind; the whole server is deleted after the run.
pub async fn fresh_database() -> String {
    let admin = server_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Postgres at {admin}: {e}"));
    let task = tokio::spawn(conn);
    let name = format!("engram_test_{}", uuid::Uuid::now_v7().simple());
    // `name` is built from hex digits only.
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    drop(client);
    let _ = task.await;
    with_database(&admin, &name)
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_swapped() {
        assert_eq!(
            super::with_database("postgres://p@127.0.0.1:5/postgres", "x"),
            "postgres://p@127.0.0.1:5/x"
        );
        assert_eq!(
            super::with_database("postgres://p@h:5/a?sslmode=disable", "x"),
            "postgres://p@h:5/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://p@h:5", "x"),
            "postgres://p@h:5/x"
        );
    }
}
