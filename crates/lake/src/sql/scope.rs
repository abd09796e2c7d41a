//! Which source objects a statement's answer can depend on.
//!
//! A silver table's rows carry the object they came from (`_source_object`, spelled
//! `bucket/key`), and an object's ingest, replacement or removal touches only rows
//! carrying its own name. So a statement that reads one silver table and keeps only the
//! rows of named objects (`WHERE _source_object = 'raw/a.csv' AND …`) has an answer
//! that no other object's write can change: read after write need wait for those
//! objects alone (`sluice up`'s `pending`), not for every upload acknowledged before it.
//!
//! The reading is conservative: anything it does not recognise for certain (a second
//! table or a subquery reading one, a common table expression, a set operation, a gold
//! or bronze table, a filter under OR or NOT) answers None, and the caller waits for
//! every earlier write as before.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as Parsed;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectName, SetExpr, Statement, TableFactor, Value,
    visit_relations,
};

use super::CATALOG;

/// The lineage column naming each row's source object.
const SOURCE_OBJECT: &str = sluice_model::contract::SOURCE_OBJECT_COLUMN;

/// The source objects (`bucket/key`) whose rows are all `statement` can read, when it
/// reads nothing else; None when its answer may depend on any write.
pub(super) fn objects_read(statement: &Parsed) -> Option<BTreeSet<String>> {
    let Parsed::Statement(statement) = statement else {
        return None;
    };
    let Statement::Query(query) = statement.as_ref() else {
        return None;
    };
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    // One table read, once, in the whole statement (a subquery anywhere would be a second
    // read of some table, perhaps this one unfiltered).
    let mut relations = 0;
    let _ = visit_relations(statement.as_ref(), |_: &ObjectName| {
        relations += 1;
        ControlFlow::<()>::Continue(())
    });
    if relations != 1 || select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = &select.from[0].relation
    else {
        return None;
    };
    let table = silver_table(name)?;
    // `AS t(a, b)` renames the table's columns: a `_source_object` may then be another.
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return None;
    }
    let qualifier = alias.as_ref().map_or(table, |a| &a.name);
    conjuncts(select.selection.as_ref()?)
        .into_iter()
        .find_map(|e| objects_named(e, qualifier))
}

/// The table a name means when it is a silver table (a bare name is one: silver is
/// the sessions' default schema).
fn silver_table(name: &ObjectName) -> Option<&Ident> {
    let parts: Vec<&Ident> = name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [table] => Some(table),
        [schema, table] if is(schema, "silver") => Some(table),
        [catalog, schema, table] if is(catalog, CATALOG) && is(schema, "silver") => Some(table),
        _ => None,
    }
}

/// Whether an identifier names `name` (unquoted ones are case-insensitive).
fn is(ident: &Ident, name: &str) -> bool {
    match ident.quote_style {
        None => ident.value.eq_ignore_ascii_case(name),
        Some(_) => ident.value == name,
    }
}

/// Whether two identifiers name the same thing.
fn same_name(a: &Ident, b: &Ident) -> bool {
    match (a.quote_style, b.quote_style) {
        (None, None) => a.value.eq_ignore_ascii_case(&b.value),
        _ => a.value == b.value,
    }
}

/// The terms of a filter's top-level AND.
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

/// The objects a term keeps: `_source_object = 'x'` (either way round) or
/// `_source_object IN ('x', 'y')`.
fn objects_named(term: &Expr, qualifier: &Ident) -> Option<BTreeSet<String>> {
    match term {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (column, value) = if is_source_object(left, qualifier) {
                (left, right)
            } else {
                (right, left)
            };
            if !is_source_object(column, qualifier) {
                return None;
            }
            text(value).map(|v| BTreeSet::from([v.to_string()]))
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } if is_source_object(expr, qualifier) => {
            list.iter().map(|v| text(v).map(str::to_string)).collect()
        }
        Expr::Nested(inner) => objects_named(inner, qualifier),
        _ => None,
    }
}

/// Whether `expr` is the lineage column, bare or qualified by the table (or its alias).
fn is_source_object(expr: &Expr, qualifier: &Ident) -> bool {
    match expr {
        Expr::Identifier(column) => is(column, SOURCE_OBJECT),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [table, column] => is(column, SOURCE_OBJECT) && same_name(table, qualifier),
            _ => false,
        },
        Expr::Nested(inner) => is_source_object(inner, qualifier),
        _ => false,
    }
}

/// A string literal's text.
fn text(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        Expr::Nested(inner) => text(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::sql::Statement;

    fn objects(sql: &str) -> Option<Vec<String>> {
        let statement = Statement::parse(sql).ok()?;
        statement
            .source_objects()
            .map(|s| s.iter().cloned().collect())
    }

    #[test]
    fn a_query_filtered_to_named_objects_depends_on_them_alone() {
        let one = Some(vec!["raw/a.csv".to_string()]);
        for sql in [
            "SELECT count(*) AS n FROM silver.trips WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM trips WHERE 'raw/a.csv' = _source_object",
            "select count(*) from lake.silver.trips where fare_amount > 0 and (_SOURCE_OBJECT = 'raw/a.csv')",
            "SELECT t.vendor_id FROM silver.trips AS t WHERE t._source_object = 'raw/a.csv' AND t.tip_amount > 1 ORDER BY 1 LIMIT 5",
            "SELECT vendor_id, sum(total_amount) FROM trips WHERE _source_object IN ('raw/a.csv') GROUP BY vendor_id",
        ] {
            assert_eq!(objects(sql), one, "{sql}");
        }
        assert_eq!(
            objects("SELECT * FROM trips WHERE _source_object IN ('raw/b.csv', 'raw/a.csv')"),
            Some(vec!["raw/a.csv".to_string(), "raw/b.csv".to_string()])
        );
    }

    #[test]
    fn anything_else_may_depend_on_every_write() {
        for sql in [
            // No filter on the lineage column, or one that does not bound the rows.
            "SELECT count(*) FROM silver.trips",
            "SELECT * FROM trips WHERE vendor_id = 1",
            "SELECT * FROM trips WHERE _source_object = 'raw/a.csv' OR vendor_id = 1",
            "SELECT * FROM trips WHERE NOT (_source_object = 'raw/a.csv')",
            "SELECT * FROM trips WHERE _source_object NOT IN ('raw/a.csv')",
            "SELECT * FROM trips WHERE _source_object <> 'raw/a.csv'",
            "SELECT * FROM trips WHERE _source_object LIKE 'raw/%'",
            "SELECT * FROM trips WHERE _source_object = upper('raw/a.csv')",
            "SELECT * FROM trips WHERE \"_Source_Object\" = 'raw/a.csv'",
            // A column of another name that happens to end the same way.
            "SELECT * FROM trips AS t WHERE other._source_object = 'raw/a.csv'",
            "SELECT * FROM trips AS t(_source_object) WHERE _source_object = 'raw/a.csv'",
            // A second read: a subquery, a join, a set operation, a CTE.
            "SELECT (SELECT count(*) FROM trips) FROM trips WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM trips WHERE _source_object = 'raw/a.csv' AND fare_amount > (SELECT avg(fare_amount) FROM trips)",
            "SELECT * FROM trips JOIN zones ON pu_location_id = location_id WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM trips WHERE _source_object = 'raw/a.csv' UNION ALL SELECT * FROM trips",
            "WITH t AS (SELECT * FROM trips) SELECT * FROM t WHERE _source_object = 'raw/a.csv'",
            // Tables whose rows are not an object's own: gold models, the quarantine, bronze.
            "SELECT * FROM gold.daily WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM sluice.quarantine WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM bronze.trips_raw WHERE _source_object = 'raw/a.csv'",
            "SELECT * FROM other.silver.trips WHERE _source_object = 'raw/a.csv'",
            // Not one query.
            "SELECT 1; SELECT * FROM trips WHERE _source_object = 'raw/a.csv'",
            "DELETE FROM trips WHERE _source_object = 'raw/a.csv'",
            "not sql at all",
        ] {
            assert_eq!(objects(sql), None, "{sql}");
        }
    }
}
