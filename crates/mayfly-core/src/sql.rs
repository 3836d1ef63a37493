//! What a piece of SQL sent by an agent is, before it runs (`run_query`): one statement, its kind,
//! the tables it names and whether it filters with a `WHERE`. Policies decide on this shape
//! (`context.query.kind != "select"`), so it is derived by a real parser (sqlparser) for the
//! target's dialect, never by looking at words: `sElEcT`, comments, a `DELETE` inside a `WITH`,
//! `SELECT … INTO`, `FOR UPDATE` and a second statement after a `;` are all seen for what they are.
//!
//! The shape is what policies see; it is not the only fence. The broker runs a `select` in a
//! read-only transaction, so a function with side effects called from a `SELECT` still cannot
//! write.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, Visit, Visitor, visit_relations,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

/// The longest SQL text classified (and run).
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// How deep the parser may nest (parentheses, subqueries) before it refuses: hostile input
/// cannot exhaust the stack.
const RECURSION_LIMIT: usize = 40;

/// The dialect the SQL is parsed in: the target's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    MySql,
}

/// What one statement does, as policies name it (`context.query.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryKind {
    /// Reads only: a query with no data-modifying part, no `INTO` and no row locks.
    Select,
    Insert,
    Update,
    Delete,
    /// `MERGE`.
    Merge,
    /// A query that takes row locks (`SELECT … FOR UPDATE`/`FOR SHARE`).
    Lock,
    /// Creates, changes or removes schema objects (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, …).
    Ddl,
    /// Anything else (`SET`, `GRANT`, `COPY`, `CALL`, `EXPLAIN`, transactions, …).
    Other,
}

impl QueryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::Select => "select",
            QueryKind::Insert => "insert",
            QueryKind::Update => "update",
            QueryKind::Delete => "delete",
            QueryKind::Merge => "merge",
            QueryKind::Lock => "lock",
            QueryKind::Ddl => "ddl",
            QueryKind::Other => "other",
        }
    }
}

/// The shape of one statement (see the module's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryShape {
    pub kind: QueryKind,
    /// The tables (and views) it names, as written, lower-cased unless quoted, `schema.table`
    /// when qualified; the names a `WITH` defines are not tables and are left out.
    pub tables: BTreeSet<String>,
    /// Whether the statement filters its rows: its `WHERE` (for a query made of several
    /// `SELECT`s joined by `UNION` and the like, every one of them has one). `false` for `INSERT`.
    pub has_where: bool,
}

/// Why a text is not one statement we can classify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("the SQL is empty")]
    Empty,
    #[error("the SQL is longer than {MAX_SQL_BYTES} bytes")]
    TooLong,
    #[error("the SQL holds {0} statements: send one per call")]
    Several(usize),
    #[error("the SQL does not parse: {0}")]
    Parse(String),
}

/// Classifies `sql` (see the module's doc): exactly one statement, parsed in `dialect`.
pub fn classify(dialect: SqlDialect, sql: &str) -> Result<QueryShape, SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::TooLong);
    }
    let statements = match dialect {
        SqlDialect::Postgres => parse(&PostgreSqlDialect {}, sql)?,
        SqlDialect::MySql => parse(&MySqlDialect {}, sql)?,
    };
    let statement = match statements.as_slice() {
        [] => return Err(SqlError::Empty),
        [one] => one,
        several => return Err(SqlError::Several(several.len())),
    };
    Ok(QueryShape {
        kind: kind_of(statement),
        tables: tables_of(statement),
        has_where: has_where(statement),
    })
}

fn parse(dialect: &dyn Dialect, sql: &str) -> Result<Vec<Statement>, SqlError> {
    Parser::new(dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| SqlError::Parse(e.to_string().chars().take(200).collect()))
}

/// The kind of the statement: the strongest thing anything in it does (a `DELETE` inside a
/// `WITH` makes a `delete` of a query).
fn kind_of(statement: &Statement) -> QueryKind {
    let mut finder = Strongest {
        kind: QueryKind::Select,
        top: true,
    };
    let _ = statement.visit(&mut finder);
    finder.kind
}

/// Walks every statement and query of a tree and keeps the strongest kind met.
struct Strongest {
    kind: QueryKind,
    top: bool,
}

impl Strongest {
    fn raise(&mut self, kind: QueryKind) {
        if rank(kind) > rank(self.kind) {
            self.kind = kind;
        }
    }
}

/// The order in which kinds win when a statement holds several.
fn rank(kind: QueryKind) -> u8 {
    match kind {
        QueryKind::Select => 0,
        QueryKind::Lock => 1,
        QueryKind::Insert => 2,
        QueryKind::Update => 3,
        QueryKind::Merge => 4,
        QueryKind::Delete => 5,
        QueryKind::Other => 6,
        QueryKind::Ddl => 7,
    }
}

impl Visitor for Strongest {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let kind = match statement {
            Statement::Query(_) => QueryKind::Select,
            Statement::Insert(_) => QueryKind::Insert,
            Statement::Update(_) => QueryKind::Update,
            Statement::Delete(_) => QueryKind::Delete,
            Statement::Merge(_) => QueryKind::Merge,
            other if is_ddl(other) => QueryKind::Ddl,
            _ => QueryKind::Other,
        };
        self.top = false;
        self.raise(kind);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() || query.for_clause.is_some() {
            self.raise(QueryKind::Lock);
        }
        let mut into = false;
        let _ = visit_selects(&query.body, &mut |select| {
            into |= select.into.is_some();
        });
        if into {
            // `SELECT … INTO new_table` creates a table.
            self.raise(QueryKind::Ddl);
        }
        ControlFlow::Continue(())
    }
}

fn is_ddl(statement: &Statement) -> bool {
    let text = statement.to_string();
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "RENAME" | "COMMENT"
    )
}

/// Calls `f` on every `SELECT` of a set expression (its `UNION`s and parentheses), not those
/// of subqueries.
fn visit_selects(body: &SetExpr, f: &mut dyn FnMut(&sqlparser::ast::Select)) -> ControlFlow<()> {
    match body {
        SetExpr::Select(select) => f(select),
        SetExpr::Query(query) => {
            let _ = visit_selects(&query.body, f);
        }
        SetExpr::SetOperation { left, right, .. } => {
            let _ = visit_selects(left, f);
            let _ = visit_selects(right, f);
        }
        _ => {}
    }
    ControlFlow::Continue(())
}

fn tables_of(statement: &Statement) -> BTreeSet<String> {
    let mut ctes = CteNames::default();
    let _ = statement.visit(&mut ctes);
    let mut tables = BTreeSet::new();
    let _ = visit_relations(statement, |name: &ObjectName| {
        let name = table_name(name);
        if !ctes.0.contains(&name) {
            tables.insert(name);
        }
        ControlFlow::<()>::Continue(())
    });
    tables
}

fn table_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) if ident.quote_style.is_some() => ident.value.clone(),
            Some(ident) => ident.value.to_lowercase(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The names a `WITH` defines anywhere in the statement.
#[derive(Default)]
struct CteNames(BTreeSet<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let ident = &cte.alias.name;
                self.0.insert(if ident.quote_style.is_some() {
                    ident.value.clone()
                } else {
                    ident.value.to_lowercase()
                });
            }
        }
        ControlFlow::Continue(())
    }
}

fn has_where(statement: &Statement) -> bool {
    match statement {
        Statement::Query(query) => {
            let mut all = true;
            let mut any = false;
            let _ = visit_selects(&query.body, &mut |select| {
                any = true;
                all &= select.selection.as_ref().is_some_and(filters);
            });
            any && all
        }
        Statement::Update(update) => update.selection.as_ref().is_some_and(filters),
        Statement::Delete(delete) => delete.selection.as_ref().is_some_and(filters),
        _ => false,
    }
}

/// A `WHERE TRUE` (or `WHERE 1 = 1`) filters nothing.
fn filters(expr: &Expr) -> bool {
    let text = expr.to_string().replace(' ', "").to_ascii_lowercase();
    !matches!(text.as_str(), "true" | "1=1" | "1" | "(true)" | "(1=1)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> QueryShape {
        classify(SqlDialect::Postgres, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn tables(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn kinds_are_read_from_the_tree_not_the_words() {
        let cases = [
            ("SELECT * FROM orders WHERE id = 1", QueryKind::Select),
            ("sElEcT 1", QueryKind::Select),
            ("/* DELETE */ SELECT 1 -- DROP TABLE x", QueryKind::Select),
            ("INSERT INTO orders (id) VALUES (1)", QueryKind::Insert),
            ("UPDATE orders SET x = 1 WHERE id = 2", QueryKind::Update),
            ("DELETE FROM orders", QueryKind::Delete),
            (
                "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
                QueryKind::Delete,
            ),
            ("SELECT * FROM orders FOR UPDATE", QueryKind::Lock),
            ("SELECT * INTO copy FROM orders", QueryKind::Ddl),
            ("DROP TABLE orders", QueryKind::Ddl),
            ("TRUNCATE orders", QueryKind::Ddl),
            ("CREATE TABLE t (id int)", QueryKind::Ddl),
            ("ALTER TABLE t ADD COLUMN x int", QueryKind::Ddl),
            ("GRANT ALL ON orders TO public", QueryKind::Other),
            ("SET ROLE postgres", QueryKind::Other),
            (
                "SELECT * FROM (SELECT * FROM orders) AS o WHERE o.id IN (SELECT id FROM items)",
                QueryKind::Select,
            ),
        ];
        for (sql, kind) in cases {
            assert_eq!(shape(sql).kind, kind, "{sql}");
        }
    }

    #[test]
    fn tables_are_named_as_written_and_ctes_are_not_tables() {
        assert_eq!(
            shape("SELECT * FROM Orders o JOIN shop.Items i ON o.id = i.order_id").tables,
            tables(&["orders", "shop.items"])
        );
        assert_eq!(
            shape(r#"SELECT * FROM "Orders""#).tables,
            tables(&["Orders"])
        );
        assert_eq!(
            shape("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent").tables,
            tables(&["orders"])
        );
        assert_eq!(
            shape("DELETE FROM orders WHERE id IN (SELECT order_id FROM refunds)").tables,
            tables(&["orders", "refunds"])
        );
    }

    #[test]
    fn a_where_is_a_where_only_if_it_filters() {
        assert!(shape("SELECT * FROM t WHERE id = 1").has_where);
        assert!(!shape("SELECT * FROM t").has_where);
        assert!(!shape("DELETE FROM t WHERE true").has_where);
        assert!(!shape("DELETE FROM t WHERE 1 = 1").has_where);
        assert!(shape("DELETE FROM t WHERE id = 3").has_where);
        assert!(!shape("UPDATE t SET a = 1").has_where);
        assert!(!shape("SELECT * FROM a WHERE x = 1 UNION SELECT * FROM b").has_where);
        assert!(!shape("INSERT INTO t VALUES (1)").has_where);
    }

    #[test]
    fn one_statement_only_and_hostile_text_is_refused() {
        assert_eq!(
            classify(SqlDialect::Postgres, "SELECT 1; DROP TABLE t"),
            Err(SqlError::Several(2))
        );
        assert_eq!(
            classify(SqlDialect::Postgres, "  ;  "),
            Err(SqlError::Empty)
        );
        assert!(matches!(
            classify(SqlDialect::Postgres, "SELEKT 1"),
            Err(SqlError::Parse(_))
        ));
        let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(
            classify(SqlDialect::Postgres, &deep),
            Err(SqlError::Parse(_))
        ));
        let long = format!("SELECT '{}'", "a".repeat(MAX_SQL_BYTES));
        assert_eq!(
            classify(SqlDialect::Postgres, &long),
            Err(SqlError::TooLong)
        );
    }

    #[test]
    fn mysql_is_parsed_in_its_own_dialect() {
        let shape = classify(SqlDialect::MySql, "SELECT * FROM `Orders` WHERE id = 1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape.kind, QueryKind::Select);
        assert_eq!(shape.tables, tables(&["Orders"]));
        let shape = classify(
            SqlDialect::MySql,
            "DELETE o FROM orders o JOIN x ON o.id = x.id",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape.kind, QueryKind::Delete);
    }
}
