"""A list page in the caller's own database: the records a user may see, searched by title,
sorted by due date and paged 50 at a time, in one SQL query filtered by blue-authz's plan.

The records service keeps its rows in PostgreSQL (`records`: id, project_id, creator_id,
title, due). It asks blue-authz once per page for the plan of `viewRecord` (PlanResources,
with its column names), and puts the plan's WHERE fragment into its own query. The fragment's
values come as parameters ($1, $2, ...; arrays for `= ANY($n)`), never inside the text.

Run by run.sh (and by .ci/run) against a live server on the demo data and the PostgreSQL on
127.0.0.1:5432:

    python list_page.py --authz unix:/tmp/authz.sock --pg "host=127.0.0.1 dbname=test user=postgres"

It loads data/demo.json's records into the schema `blue_example`, prints each user's first page,
and exits non-zero if a page differs from what IsAuthorized allows record by record.
"""

import argparse
import json
import os
import re
import sys

import psycopg

from client import ask, pb, rpc, uid, wait_until_serving
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "data", "demo.json")

# Our column for each attribute of Blue::Record (and its id) that a plan may read.
COLUMNS = {"id": "id", "project": "project_id", "creator": "creator_id"}


def load_records(conn):
    """The records table, filled from the demo data (titles and due dates made up)."""
    with open(DEMO) as f:
        entities = json.load(f)
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS blue_example CASCADE; CREATE SCHEMA blue_example")
        cur.execute("SET search_path TO blue_example")
        cur.execute(
            "CREATE TABLE records (id text PRIMARY KEY, project_id text NOT NULL,"
            " creator_id text NOT NULL, title text NOT NULL, due date NOT NULL)"
        )
        for i, e in enumerate(x for x in entities if x["uid"]["type"] == "Blue::Record"):
            a = e["attrs"]
            cur.execute(
                "INSERT INTO records VALUES (%s, %s, %s, %s, date '2027-01-01' + %s)",
                (
                    e["uid"]["id"],
                    a["project"]["__entity"]["id"],
                    a["creator"]["__entity"]["id"],
                    f"Record {e['uid']['id']}",
                    (i * 37) % 365,
                ),
            )
    return [e["uid"]["id"] for e in entities if e["uid"]["type"] == "Blue::User"]


def param(p):
    kind = p.WhichOneof("kind")
    v = getattr(p, kind)
    return list(v.items) if kind in ("texts", "longs", "bools") else v


def page(authz, conn, user, search="", page_no=0, size=50):
    """One page of the records `user` may see whose title contains `search`, by due date."""
    plan = authz.PlanResources(
        pb.PlanResourcesRequest(
            principal=uid("Blue::User", user),
            action=uid("Blue::Action", "viewRecord"),
            resource_type="Blue::Record",
            sql_columns=COLUMNS,
        )
    )
    # psycopg names its placeholders %(name)s: $n becomes %(pn)s, the values a dict.
    where = re.sub(r"\$(\d+)", r"%(p\1)s", plan.sql.where)
    params = {f"p{i + 1}": param(p) for i, p in enumerate(plan.sql.params)}
    params.update(search=f"%{search}%", size=size, skip=page_no * size)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT id, title, due FROM records WHERE ({where}) AND title ILIKE %(search)s"
            " ORDER BY due, id LIMIT %(size)s OFFSET %(skip)s",
            params,
        )
        return plan, cur.fetchall()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--authz", required=True)
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 dbname=test user=postgres")
    args = ap.parse_args()
    # As in client.py: over a Unix socket, name an authority explicitly.
    options = [("grpc.default_authority", "localhost")]
    authz = rpc.AuthorizerStub(grpc.insecure_channel(args.authz, options=options))
    wait_until_serving(authz)
    with psycopg.connect(args.pg, autocommit=True) as conn:
        users = load_records(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM records ORDER BY id")
            every = [r[0] for r in cur.fetchall()]
        failures = 0
        for user in users:
            plan, rows = page(authz, conn, user, search="")
            ids = sorted(r[0] for r in rows)
            allowed = sorted(
                r for r in every if authz.IsAuthorized(ask(user, "viewRecord", "Blue::Record", r)).decision == pb.ALLOW
            )
            ok = ids == allowed
            failures += not ok
            print(
                f"{user:>6}: {pb.PlanDecision.Name(plan.decision):<14} {plan.sql.where:<40}"
                f" page {[r[0] for r in rows]} {'ok' if ok else f'WRONG, IsAuthorized allows {allowed}'}"
            )
        # A search narrows the same page in the database.
        _, rows = page(authz, conn, "bob", search="nothing-matches-this")
        if rows:
            failures += 1
            print("a search that matches no title returned rows", rows)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
