"""HCL's postfix steps after a term: ``.name``, ``.0``, ``[key]`` and the splats.

Mixed into the parser (syntax.py) like collection.py and template.py. The steps after a
splat (``[*]`` or ``.*``) apply to each element; ``.*`` takes only ``.name`` steps; junk
inside an index is reported at the ``]`` that closes it, where hclsyntax reports it
(docs/plan-language.md §2).
"""

from __future__ import annotations

from guest.contract.plan import expr as ex
from guest.contract.plan.errors import PlanError
from guest.contract.plan.lexer import Token, describe
from guest.contract.plan.template import TemplateParser


class TraversalParser(TemplateParser):
    def steps(self, value: ex.Expr) -> ex.Expr:
        """Postfix ``.name``, ``.0``, ``[key]``, ``.*`` and ``[*]`` after a term."""
        cur = self.cur
        while True:
            token = cur.peek()
            if token.kind == ".":
                cur.take(token)
                if cur.peek().kind == "*":
                    cur.next()
                    return self.splat(value, token, full=False)
                value = self.attr_step(value, token)
            elif token.kind == "[":
                cur.take(token)
                if cur.peek().kind == "*":
                    cur.next()
                    self.closing("]", token)
                    return self.splat(value, token, full=True)
                value = self.index_step(value, token)
            else:
                return value

    def attr_step(self, value: ex.Expr, dot: Token) -> ex.Expr:
        cur = self.cur
        text = cur.text
        end = cur.pos
        while end < len(text) and text[end].isdigit():
            end += 1
        if end > cur.pos:  # value.0: a legacy index (read as digits, never as 0.1)
            digits = text[cur.pos : end]
            cur.pos = end
            return ex.GetAttr(value, digits, self.loc(dot))
        name = cur.peek()
        if name.kind != "name":
            raise cur.unexpected(name, "an attribute name after .")
        cur.take(name)
        return ex.GetAttr(value, name.text, self.loc(dot))

    def index_step(self, value: ex.Expr, bracket: Token) -> ex.Expr:
        cur = self.cur
        cur.push(newlines=False)
        try:
            key = self.expression()
            if cur.peek().kind != "]":
                raise self.unclosed_index(bracket)
            cur.next()
        finally:
            cur.pop()
        return ex.Index(value, key, self.loc(bracket))

    def unclosed_index(self, bracket: Token) -> PlanError:
        """Junk in an index: hclsyntax reports it at the ] that closes it, so do we."""
        cur = self.cur
        junk = cur.peek()
        opened = self.loc(bracket)
        message = (
            f"HCL syntax error: unexpected {describe(junk)} in the index [ opened at "
            f"{opened.line}:{opened.column}; expected ]"
        )
        depth = 0
        try:
            while True:
                token = cur.next()
                if token.kind == '"':
                    self.quoted(token.start)
                elif token.kind == "heredoc":
                    self.heredoc(token.text, token.start)
                elif token.kind == "[":
                    depth += 1
                elif token.kind == "]" and depth:
                    depth -= 1
                elif token.kind in ("]", "eof"):
                    return cur.error(message, token.start)
        except PlanError:  # the rest does not even lex: hclsyntax then stops at the end
            return cur.error(message, len(cur.text))

    def splat(self, source: ex.Expr, token: Token, *, full: bool) -> ex.Expr:
        """The steps after a splat apply to each element (``.*`` takes only ``.name``)."""
        cur = self.cur
        where = self.loc(token)
        each: ex.Expr = ex.Variable(ex.SPLAT_ITEM, where)
        while True:
            step = cur.peek()
            if step.kind == ".":
                if cur.text.startswith(".*", step.start):
                    if not full:
                        raise cur.error("a .* splat cannot hold another splat", step.start + 1)
                    cur.pos = step.start + 2
                    return ex.Splat(source, self.splat(each, step, full=False), where)
                cur.next()
                each = self.attr_step(each, step)
            elif step.kind == "[" and full:
                cur.next()
                if cur.peek().kind == "*":  # a splat in a splat applies per item (hclsyntax)
                    cur.next()
                    self.closing("]", step)
                    return ex.Splat(source, self.splat(each, step, full=True), where)
                each = self.index_step(each, step)
            else:
                break
        return self.steps(ex.Splat(source, each, where))
