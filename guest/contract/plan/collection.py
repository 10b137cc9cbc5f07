"""HCL's collection constructors: tuples, objects and ``for`` expressions.

Mixed into the parser (syntax.py), whose cursor and expression parser it uses. Inside
``[ ]`` and a ``for`` newlines are ignored; inside an object constructor they separate
items, so an item's value ends at the end of its line, as hclsyntax does
(docs/plan-language.md §2).
"""

from __future__ import annotations

from guest.contract.plan import expr as ex
from guest.contract.plan.lexer import Cursor, ParserBase, Token, describe


class CollectionParser(ParserBase):
    def tuple_or_for(self) -> ex.Expr:
        cur = self.cur
        open_bracket = cur.next()
        cur.push(newlines=False)
        try:
            if _is_for(cur):
                return self.for_expr(open_bracket, "]")
            items: list[ex.Expr] = []
            token = cur.peek()
            while token.kind != "]":
                items.append(self.expression())
                token = cur.peek()
                if token.kind == ",":
                    cur.take(token)
                    token = cur.peek()
                elif token.kind == "eof":  # hclsyntax points at the [ for this one
                    raise cur.error("this [ is never closed with ]", open_bracket.start)
                elif token.kind != "]":
                    raise cur.unexpected(token, ", or ] in this list")
            cur.take(token)
            return ex.TupleExpr(tuple(items), self.loc(open_bracket))
        finally:
            cur.pop()

    def object_or_for(self) -> ex.Expr:
        cur = self.cur
        open_brace = cur.next()
        cur.push(newlines=False)
        try:
            if _is_for(cur):
                return self.for_expr(open_brace, "}")
        finally:
            cur.pop()
        cur.push(newlines=True)
        try:
            return self.object_items(open_brace)
        finally:
            cur.pop()

    def object_items(self, open_brace: Token) -> ex.Expr:
        """``{ key = value, ... }``: items end with a comma or a newline, as HCL."""
        cur = self.cur
        items: list[ex.ObjectItem] = []
        while True:
            cur.skip_newlines()
            token = cur.peek()
            if token.kind == "}":
                cur.next()
                return ex.ObjectExpr(tuple(items), self.loc(open_brace))
            key, key_expr = self.object_key(token)
            sep = cur.peek()
            if sep.kind not in ("=", ":"):
                raise cur.unexpected(sep, "= or : after an object key")
            cur.next()
            items.append(ex.ObjectItem(key, self.expression(), self.loc(token), key_expr))
            after = cur.peek()
            if after.kind == ",":
                cur.next()
            elif after.kind not in ("nl", "}"):
                raise cur.error(
                    f"HCL syntax error: unexpected {describe(after)}; expected a comma or a "
                    "newline after this object item",
                    after.start,
                )

    def object_key(self, token: Token) -> tuple[str, ex.Expr | None]:
        """A bare name is the key itself (not a variable); anything else is computed."""
        cur = self.cur
        if token.kind == "name":
            cur.next()
            if cur.peek().kind in ("=", ":"):
                return token.text, None
            cur.pos = token.start  # a longer expression that starts with a name
        key = self.expression()  # newline-sensitive, as the item's value (hclsyntax)
        if isinstance(key, ex.Literal) and isinstance(key.value, str):
            return key.value, None
        return cur.text[token.start : cur.pos].strip(), key

    def for_expr(self, opener: Token, close: str) -> ex.Expr:
        cur = self.cur
        cur.next()  # for
        first = self.name("a variable name after for")
        key_var = None
        value_var = first
        if cur.peek().kind == ",":
            cur.next()
            key_var, value_var = first, self.name("a variable name after ,")
        keyword = cur.peek()
        if keyword.kind != "name" or keyword.text != "in":
            raise cur.unexpected(keyword, "in")
        cur.next()
        collection = self.expression()
        cur.expect(":", ": after the for's collection")
        key = None
        value = self.expression()
        grouping = False
        if close == "}":
            cur.expect("=>", "=> between the key and the value of an object for")
            key, value = value, self.expression()
            if cur.peek().kind == "...":
                cur.next()
                grouping = True
        condition = None
        token = cur.peek()
        if token.kind == "name" and token.text == "if":
            cur.next()
            condition = self.expression()
        self.closing(close, opener)
        where = self.loc(opener)
        return ex.ForExpr(key_var, value_var, collection, key, value, condition, grouping, where)


def _is_for(cur: Cursor) -> bool:
    token = cur.peek()
    return token.kind == "name" and token.text == "for"
