//! Where a key sits in a scenario's TOML, so that an error found after parsing (a range, a
//! duplicate, a contradiction between keys) points at the key that causes it.

/// One step of a key path: a table key, or an index into an array (of tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A key of a table or inline table.
    Key(&'a str),
    /// An element of an array of tables (`[[host]]`) or of an array of inline tables.
    Index(usize),
}

/// The byte offset in `text` of the key at `path` (e.g. `host`, 1, `link`, `latency_ms`);
/// when the path goes further than the text (a key left to its default), the offset of the
/// deepest key on the way. `None` when not even the first key is in the text.
pub fn key_offset(text: &str, path: &[Step]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    walk(doc.as_table(), path)
}

fn walk(table: &dyn toml_edit::TableLike, path: &[Step]) -> Option<usize> {
    let Some(Step::Key(k)) = path.first() else {
        return None;
    };
    let here = table.key(k).and_then(|key| key.span()).map(|s| s.start)?;
    let item = table.get(k)?;
    let deeper = match path.get(1) {
        None => None,
        Some(Step::Key(_)) => item.as_table_like().and_then(|t| walk(t, &path[1..])),
        Some(Step::Index(i)) => {
            if let Some(tables) = item.as_array_of_tables() {
                tables
                    .get(*i)
                    .and_then(|t| walk(t, &path[2..]).or_else(|| t.span().map(|s| s.start)))
            } else {
                item.as_array().and_then(|a| a.get(*i)).and_then(|v| {
                    let inline = v.as_inline_table();
                    inline
                        .and_then(|t| walk(t, &path[2..]))
                        .or_else(|| v.span().map(|s| s.start))
                })
            }
        }
    };
    Some(deeper.unwrap_or(here))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "duration_s = 5\n[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\nlink = { latency_ms = 3 }\n[workload]\nmessages = 0\ninterfaces = { wifi = \"prefer\" }\n[[fault]]\nat_ms = 1\n";

    fn at(path: &[Step]) -> Option<&'static str> {
        key_offset(TEXT, path).map(|o| &TEXT[o..o + TEXT[o..].find([' ', '\n']).unwrap_or(0)])
    }

    #[test]
    fn finds_keys_in_tables_arrays_and_inline_tables() {
        use Step::*;
        assert_eq!(at(&[Key("duration_s")]), Some("duration_s"));
        assert_eq!(at(&[Key("workload"), Key("messages")]), Some("messages"));
        assert_eq!(at(&[Key("host"), Index(1), Key("name")]), Some("name"));
        let lat = key_offset(
            TEXT,
            &[Key("host"), Index(1), Key("link"), Key("latency_ms")],
        );
        assert_eq!(lat, TEXT.find("latency_ms"));
        let wifi = key_offset(TEXT, &[Key("workload"), Key("interfaces"), Key("wifi")]);
        assert_eq!(wifi, TEXT.find("wifi"));
        assert_eq!(at(&[Key("fault"), Index(0), Key("at_ms")]), Some("at_ms"));
        // A key left out: the deepest key that is there.
        assert_eq!(at(&[Key("workload"), Key("port")]), Some("workload]"));
        assert_eq!(key_offset(TEXT, &[Key("nothing")]), None);
    }
}
