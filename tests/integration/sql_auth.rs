//! SQL authentication against a real PostgreSQL: each hash format found in real user tables, attributes from
//! columns, flag columns, an outage, and the chain.

use casd::NodeHandle;
use casd::auth::SourceConfig;

use crate::directories::*;
use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// "correct horse" hashed by independent implementations (Python's hashlib in Django's and passlib's layouts,
/// glibc crypt(3)), and by the bcrypt and argon2 crates at test time.
fn users_table(pg: &Postgres) {
    let bcrypt = bcrypt::hash("correct horse", 4).expect("bcrypt");
    let argon = casd::auth::hash_password("correct horse").expect("argon2");
    pg.psql(
        "CREATE TABLE users (login text PRIMARY KEY, password_hash text, mail text, groups text[], \
         employee_no integer, locked boolean NOT NULL DEFAULT false)",
    );
    let rows = [
        ("u_argon2", argon.as_str()),
        ("u_bcrypt", bcrypt.as_str()),
        ("u_django", "pbkdf2_sha256$1000$saltsalt1234$vCowWi1dB0WkHn96blKCnL2OG83kjxRxvy4fTd6Hm28="),
        ("u_passlib", "$pbkdf2-sha256$2000$AQIDBAUGBwgJEBESExQVFg$QLLeu/o1B36XAolhfF2LSKEzDnv4zCR82p/xpPrekWA"),
        (
            "u_sha512",
            "$6$rounds=5000$abcdefgh12345678$hH3FjZZkD.RuGmIukoJ6X1/ojxI7Q6oXs70HmGNrON9WfqbLQ0xd/ksJZ6H.4WbnNfveboF8T745gOj/MOnsv.",
        ),
    ];
    for (login, hash) in rows {
        pg.psql(&format!(
            "INSERT INTO users VALUES ('{login}', '{hash}', '{login}@example.org', ARRAY['staff','{login}'], 42, false)"
        ));
    }
    pg.psql(&format!("INSERT INTO users VALUES ('u_locked', '{bcrypt}', NULL, NULL, NULL, true)"));
    pg.psql("INSERT INTO users VALUES ('u_nopassword', NULL, NULL, NULL, NULL, false)");
}

fn sql_source(pg: &Postgres) -> SourceConfig {
    toml::from_str(&format!(
        r#"type = "sql"
        url = "{url}"
        password_file = "{pw}"
        query = 'SELECT password_hash, mail, groups AS "memberOf", employee_no, locked FROM users WHERE login = $1'
        locked_column = "locked"
        attribute_map = {{ employee_no = "employeeNumber" }}
        pool_size = 2
        connect_timeout = "1s"
        query_timeout = "2s""#,
        url = pg.url(),
        pw = pg.password_file.display()
    ))
    .expect("sql source")
}

async fn login(node: &NodeHandle, user: &str, password: &str) -> Page {
    Browser::new(node).login_with(Some(APP), "", user, password).await
}

#[tokio::test]
async fn every_hash_format_logs_in_and_columns_become_attributes() {
    let pg = Postgres::start();
    users_table(&pg);
    let node = start(|c| {
        c.auth.users.clear();
        c.auth.sources = vec![sql_source(&pg)];
    })
    .await;
    for user in ["u_argon2", "u_bcrypt", "u_django", "u_passlib", "u_sha512"] {
        assert_eq!(login(&node, user, "correct horsf").await.status, 401, "{user}: a wrong password");
        let st = ticket_of(&login(&node, user, "correct horse").await);
        let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
        assert_eq!(user_of(&xml).as_deref(), Some(user), "{xml}");
        assert!(xml.contains(&format!("<cas:mail>{user}@example.org</cas:mail>")), "{xml}");
        assert!(xml.contains("<cas:memberOf>staff</cas:memberOf>"), "text[] is multi-valued: {xml}");
        assert!(xml.contains(&format!("<cas:memberOf>{user}</cas:memberOf>")), "{xml}");
        assert!(xml.contains("<cas:employeeNumber>42</cas:employeeNumber>"), "renamed integer column: {xml}");
        assert!(!xml.contains("password_hash") && !xml.contains("<cas:locked>"), "{xml}");
    }
    let page = login(&node, "u_locked", "correct horse").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("Your account is locked"), "{}", page.body);
    assert_eq!(login(&node, "u_nopassword", "anything").await.status, 401);
    assert_eq!(login(&node, "nobody", "correct horse").await.status, 401);
    assert_eq!(login(&node, "' OR '1'='1", "correct horse").await.status, 401, "the name is a bound parameter");
    node.shutdown().await;
}

#[tokio::test]
async fn database_down_is_service_unavailable_and_the_users_file_still_serves() {
    let mut pg = Postgres::start();
    users_table(&pg);
    let node = start(|c| {
        c.throttle.max_failures = 3;
        c.auth.sources = vec![sql_source(&pg), SourceConfig::Users];
    })
    .await;
    ticket_of(&login(&node, "u_bcrypt", "correct horse").await);
    pg.stop();
    for _ in 0..4 {
        let page = login(&node, "u_bcrypt", "correct horse").await;
        assert_eq!(page.status, 503, "{}", page.body);
    }
    ticket_of(&login(&node, USER, PASSWORD).await);
    node.shutdown().await;
}
