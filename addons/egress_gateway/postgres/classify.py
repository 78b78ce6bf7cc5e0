"""Statement classification with the real PostgreSQL parser (pglast = libpg_query), pure.

For every statement of a query string: its type (``SELECT``, ``DELETE``, ``DROP``, ...), the
tables it names, whether an UPDATE/DELETE lacks a WHERE, whether it writes, and its text with
every literal replaced by ``$n`` (what audit lines carry: never values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast, enums, parser, visitors

# Type names by parse node class (others: the class name without "Stmt", upper case).
_TYPES = {
    "SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE", "MergeStmt": "MERGE", "TruncateStmt": "TRUNCATE",
    "CopyStmt": "COPY", "DoStmt": "DO", "CallStmt": "CALL", "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW", "TransactionStmt": "TRANSACTION", "ExplainStmt": "EXPLAIN",
    "DeclareCursorStmt": "DECLARE", "FetchStmt": "FETCH", "ClosePortalStmt": "CLOSE",
    "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "DeallocateStmt": "DEALLOCATE",
    "GrantStmt": "GRANT", "GrantRoleStmt": "GRANT", "IndexStmt": "CREATE", "ViewStmt": "CREATE",
    "CreateTableAsStmt": "CREATE", "RenameStmt": "ALTER", "LockStmt": "LOCK",
    "VacuumStmt": "VACUUM", "NotifyStmt": "NOTIFY", "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN", "DiscardStmt": "DISCARD", "CheckPointStmt": "CHECKPOINT",
    "RefreshMatViewStmt": "REFRESH", "ReindexStmt": "REINDEX", "ClusterStmt": "CLUSTER",
    "CommentStmt": "COMMENT", "ConstraintsSetStmt": "SET",
}
# Statements that never write (given what they contain is checked too).
_READ = frozenset({"SHOW", "TRANSACTION", "FETCH", "CLOSE", "DEALLOCATE", "LISTEN", "UNLISTEN",
                   "DISCARD"})
# Settings an agent may not change on a read-only entry (they would undo the guard).
_GUARDED_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only",
                               "session_authorization", "role"})
_DROP_RELATIONS = frozenset({enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_VIEW,
                             enums.ObjectType.OBJECT_MATVIEW, enums.ObjectType.OBJECT_SEQUENCE,
                             enums.ObjectType.OBJECT_FOREIGN_TABLE, enums.ObjectType.OBJECT_INDEX})
_LITERALS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST"})


@dataclass
class Statement:
    """One classified statement."""

    type: str
    tables: list[str] = field(default_factory=list)
    without_where: bool = False
    writes: bool = False
    text: str = ""  # the statement with its literals replaced by $n
    copy_format: str | None = None  # COPY: "text", "csv" or "binary"


class _Tables(visitors.Visitor):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.ctes: set[str] = set()

    def visit_RangeVar(self, ancestors, node) -> None:  # noqa: N802 - pglast's naming
        name = ".".join(p for p in (node.schemaname, node.relname) if p)
        if name not in self.names:
            self.names.append(name)

    def visit_CommonTableExpr(self, ancestors, node) -> None:  # noqa: N802
        self.ctes.add(node.ctename)

    def visit_DropStmt(self, ancestors, node) -> None:  # noqa: N802
        if node.removeType not in _DROP_RELATIONS:
            return
        for obj in node.objects or ():
            parts = obj if isinstance(obj, tuple | list) else (obj,)
            name = ".".join(getattr(p, "sval", "") for p in parts if getattr(p, "sval", None))
            if name and name not in self.names:
                self.names.append(name)


class _Writes(visitors.Visitor):
    """Finds data-modifying nodes anywhere in a tree (CTEs, sub-queries)."""

    def __init__(self) -> None:
        self.found = False

    def visit_InsertStmt(self, ancestors, node) -> None:  # noqa: N802
        self.found = True

    visit_UpdateStmt = visit_DeleteStmt = visit_MergeStmt = visit_InsertStmt  # noqa: N815

    def visit_SelectStmt(self, ancestors, node) -> None:  # noqa: N802
        if node.intoClause is not None or node.lockingClause:
            self.found = True


def _type_of(node) -> str:
    name = type(node).__name__
    if name in _TYPES:
        return _TYPES[name]
    base = name[:-4] if name.endswith("Stmt") else name
    for prefix in ("Create", "Alter", "Drop", "Grant", "Rename", "Import", "Security"):
        if base.startswith(prefix):
            return {"Rename": "ALTER", "Import": "CREATE", "Security": "ALTER"}.get(prefix,
                                                                                  prefix.upper())
    return base.upper()


def _writes(node, kind: str) -> bool:
    if kind in _READ:
        return False
    if kind in ("SET", "RESET"):
        name = (getattr(node, "name", None) or "").lower()
        return name in _GUARDED_SETTINGS or name in ("transaction", "session characteristics")
    if kind in ("SELECT", "DECLARE", "EXPLAIN", "PREPARE"):
        inner = {"DECLARE": "query", "EXPLAIN": "query", "PREPARE": "query"}.get(kind)
        target = getattr(node, inner) if inner else node
        w = _Writes()
        w(target)
        return w.found
    if kind == "COPY":
        if node.is_from:
            return True
        if node.query is not None:
            w = _Writes()
            w(node.query)
            return w.found
        return False
    return True


def normalize(sql: str) -> str:
    """`sql` with every literal replaced by $n (numbered after the parameters it already has)."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return "<unparseable>"
    top = 0
    for t in tokens:
        if t.name == "PARAM":
            digits = sql[t.start + 1:t.end + 1]
            if digits.isdigit():
                top = max(top, int(digits))
    out, pos = [], 0
    for t in tokens:
        if t.name in _LITERALS:
            top += 1
            out.append(sql[pos:t.start])
            out.append(f"${top}")
            pos = t.end + 1
    out.append(sql[pos:])
    return "".join(out)


def classify(sql: str) -> list[Statement]:
    """Every statement of `sql`; ValueError if PostgreSQL's parser rejects it."""
    try:
        raw = parser.parse_sql(sql)
    except parser.ParseError as e:
        raise ValueError(f"the statement does not parse: {e}") from None
    out = []
    for rs in raw or ():
        node = rs.stmt
        if isinstance(node, ast.ExplainStmt) and any(
                getattr(o, "defname", "") == "analyze" for o in node.options or ()):
            node = node.query  # EXPLAIN ANALYZE runs the statement: it is what it explains
        kind = _type_of(node)
        tv = _Tables()
        tv(node)
        tables = [t for t in tv.names if t not in tv.ctes]
        without_where = isinstance(node, ast.UpdateStmt | ast.DeleteStmt) \
            and node.whereClause is None
        start = rs.stmt_location or 0
        text = sql[start:start + rs.stmt_len] if rs.stmt_len else sql[start:]
        st = Statement(kind, tables, bool(without_where), _writes(node, kind),
                       normalize(text.strip()))
        if isinstance(node, ast.CopyStmt):
            st.copy_format = "text"
            for opt in node.options or ():
                if getattr(opt, "defname", "") == "format":
                    st.copy_format = str(getattr(opt.arg, "sval", "text")).lower()
        out.append(st)
    return out
