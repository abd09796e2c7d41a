"""Independent oracle: DuckDB over the Parquet files a Delta table's log says are active.

usage: oracle.py TABLE_DIR SQL   (SQL reads the view `t`); prints the rows as JSON.
The Delta log is replayed here by hand (add/remove actions), not by sluice's code.
"""
import json
import os
import sys
import urllib.parse

import duckdb

table_dir, sql = sys.argv[1], sys.argv[2]
log_dir = os.path.join(table_dir, "_delta_log")
active = {}
for name in sorted(f for f in os.listdir(log_dir) if f.endswith(".json")):
    with open(os.path.join(log_dir, name)) as f:
        for line in f:
            action = json.loads(line)
            if "add" in action:
                active[action["add"]["path"]] = action["add"]["partitionValues"]
            elif "remove" in action:
                active.pop(action["remove"]["path"], None)
con = duckdb.connect()
if active:
    files = [os.path.join(table_dir, urllib.parse.unquote(p)) for p in sorted(active)]
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true, union_by_name = true)")
rows = con.execute(sql).fetchall() if active else []
cols = [d[0] for d in con.description] if active else []
print(json.dumps([dict(zip(cols, [float(v) if hasattr(v, "as_tuple") else v for v in row])) for row in rows], default=str))
