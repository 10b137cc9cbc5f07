// Command plan-oracle reads cloud-boot plans the way upstream's guest decoder does and
// prints a JSON verdict for each, so our own parser can be checked against hclsyntax.
//
// Protocol (one process serves many plans, which keeps the tests fast): every stdin line
// is a JSON request {"id", "name", "text", "arches"}; every stdout line is the answer
// {"id", "parse": {"ok", "diagnostics"}, "arches": {arch: {"ok", "plan" | "diagnostics"}}}.
//
// The schema below restates facts about upstream's decoder (docs/plan-language.md §8):
// a top-level `locals` block read first and evaluated against arch and lldp only (later
// blocks win on duplicate names), then default_target, dns, one optional `menu` block and
// `target "name"` blocks decoded against arch, lldp and local; inside a target the
// label, OCI refs, subplan and cmdline see self.{name,arch,version} as well; a `disk`
// block is plain strings. Everything is evaluated with no functions. The code is ours.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

type request struct {
	ID     json.RawMessage `json:"id"`
	Name   string          `json:"name"`
	Text   string          `json:"text"`
	Arches []string        `json:"arches"`
}

type diagnostic struct {
	Summary string `json:"summary"`
	Detail  string `json:"detail"`
	Line    int    `json:"line"`
	Column  int    `json:"column"`
}

type stage struct {
	OK          bool         `json:"ok"`
	Diagnostics []diagnostic `json:"diagnostics,omitempty"`
	Plan        *rendered    `json:"plan,omitempty"`
}

type response struct {
	ID     json.RawMessage  `json:"id"`
	Parse  stage            `json:"parse"`
	Arches map[string]stage `json:"arches,omitempty"`
}

// The schema, as gohcl tags.
type planBody struct {
	DefaultTarget string       `hcl:"default_target,optional"`
	DNS           []string     `hcl:"dns,optional"`
	Menu          *menuBody    `hcl:"menu,block"`
	Targets       []targetBody `hcl:"target,block"`
}

type menuBody struct {
	Timeout string `hcl:"timeout,optional"`
	Prompt  string `hcl:"prompt,optional"`
}

type targetBody struct {
	Name    string         `hcl:"name,label"`
	Arch    string         `hcl:"arch,optional"`
	Version string         `hcl:"version,optional"`
	Label   hcl.Expression `hcl:"label,optional"`
	Index   hcl.Expression `hcl:"index,optional"`
	Kernel  hcl.Expression `hcl:"kernel,optional"`
	Initrd  hcl.Expression `hcl:"initrd,optional"`
	Modules hcl.Expression `hcl:"modules,optional"`
	Cmdline hcl.Expression `hcl:"cmdline,optional"`
	Subplan hcl.Expression `hcl:"subplan,optional"`
	Disk    *diskBody      `hcl:"disk,block"`
}

type diskBody struct {
	Device string `hcl:"device"`
	FS     string `hcl:"fs,optional"`
	Kernel string `hcl:"kernel,optional"`
	Initrd string `hcl:"initrd,optional"`
}

type rendered struct {
	Locals        map[string]json.RawMessage `json:"locals"`
	DefaultTarget string                     `json:"default_target"`
	DNS           []string                   `json:"dns"`
	Menu          *menuBody                  `json:"menu"`
	Targets       []renderedTarget           `json:"targets"`
}

type renderedTarget struct {
	Name    string            `json:"name"`
	Arch    string            `json:"arch"`
	Version string            `json:"version"`
	Values  map[string]string `json:"values"`
	Disk    *diskBody         `json:"disk"`
}

func fromHCL(diags hcl.Diagnostics) []diagnostic {
	out := []diagnostic{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		item := diagnostic{Summary: d.Summary, Detail: d.Detail}
		if d.Subject != nil {
			item.Line, item.Column = d.Subject.Start.Line, d.Subject.Start.Column
		}
		out = append(out, item)
	}
	// gohcl walks Go maps, so its order varies from run to run: report in source order.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].Column < out[j].Column
	})
	return out
}

func failure(summary string, at hcl.Range) stage {
	return stage{Diagnostics: []diagnostic{{Summary: summary, Line: at.Start.Line, Column: at.Start.Column}}}
}

func lldpUnavailable() cty.Value {
	facts := map[string]cty.Value{"available": cty.False}
	for _, name := range []string{"chassis_id", "port_id", "system_name", "system_desc", "port_desc", "mgmt_addr"} {
		facts[name] = cty.StringVal("")
	}
	return cty.ObjectVal(facts)
}

// locals evaluates every locals block in source order; a later name replaces an earlier one.
func locals(blocks hcl.Blocks, ctx *hcl.EvalContext) (map[string]cty.Value, *stage) {
	values := map[string]cty.Value{}
	for _, block := range blocks {
		attrs, diags := block.Body.JustAttributes()
		if diags.HasErrors() {
			return nil, &stage{Diagnostics: fromHCL(diags)}
		}
		list := make([]*hcl.Attribute, 0, len(attrs))
		for _, attr := range attrs {
			list = append(list, attr)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Range.Start.Byte < list[j].Range.Start.Byte })
		for _, attr := range list {
			value, diags := attr.Expr.Value(ctx)
			if diags.HasErrors() {
				return nil, &stage{Diagnostics: fromHCL(diags)}
			}
			values[attr.Name] = value
		}
	}
	return values, nil
}

func evalString(expr hcl.Expression, ctx *hcl.EvalContext) (string, *stage) {
	value, diags := expr.Value(ctx)
	if diags.HasErrors() {
		return "", &stage{Diagnostics: fromHCL(diags)}
	}
	if value.IsNull() {
		return "", nil
	}
	if value.Type() != cty.String {
		bad := failure("must be a string, got "+value.Type().FriendlyName(), expr.Range())
		return "", &bad
	}
	return value.AsString(), nil
}

func evalCmdline(expr hcl.Expression, ctx *hcl.EvalContext) (string, *stage) {
	value, diags := expr.Value(ctx)
	if diags.HasErrors() {
		return "", &stage{Diagnostics: fromHCL(diags)}
	}
	if value.IsNull() {
		return "", nil
	}
	ty := value.Type()
	if ty == cty.String {
		return value.AsString(), nil
	}
	if !ty.IsTupleType() && !ty.IsListType() {
		bad := failure("must be a string or list of strings, got "+ty.FriendlyName(), expr.Range())
		return "", &bad
	}
	joined := ""
	for it := value.ElementIterator(); it.Next(); {
		_, item := it.Element()
		if item.IsNull() {
			continue
		}
		if item.Type() != cty.String {
			bad := failure("list element must be string, got "+item.Type().FriendlyName(), expr.Range())
			return "", &bad
		}
		if s := item.AsString(); s != "" {
			if joined != "" {
				joined += " "
			}
			joined += s
		}
	}
	return joined, nil
}

func target(t *targetBody, header hcl.Range, ctx *hcl.EvalContext) (renderedTarget, *stage) {
	own := ctx.NewChild()
	own.Variables = map[string]cty.Value{"self": cty.ObjectVal(map[string]cty.Value{
		"name": cty.StringVal(t.Name), "arch": cty.StringVal(t.Arch), "version": cty.StringVal(t.Version),
	})}
	out := renderedTarget{Name: t.Name, Arch: t.Arch, Version: t.Version, Disk: t.Disk, Values: map[string]string{}}
	fields := []struct {
		name string
		expr hcl.Expression
	}{
		{"label", t.Label}, {"index", t.Index}, {"kernel", t.Kernel}, {"initrd", t.Initrd},
		{"modules", t.Modules}, {"subplan", t.Subplan},
	}
	for _, f := range fields {
		if f.expr == nil {
			continue
		}
		s, bad := evalString(f.expr, own)
		if bad != nil {
			return out, bad
		}
		out.Values[f.name] = s
	}
	if t.Cmdline != nil {
		s, bad := evalCmdline(t.Cmdline, own)
		if bad != nil {
			return out, bad
		}
		out.Values["cmdline"] = s
	}
	kinds := 0
	v := out.Values
	if v["index"] != "" || v["kernel"] != "" || v["initrd"] != "" || v["modules"] != "" {
		kinds++
	}
	if t.Disk != nil {
		kinds++
	}
	if v["subplan"] != "" {
		kinds++
	}
	if kinds != 1 {
		bad := failure(fmt.Sprintf("target %q must set exactly one of an OCI ref, disk{} block, or subplan=", t.Name), header)
		return out, &bad
	}
	return out, nil
}

func decode(body *hclsyntax.Body, arch string) stage {
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{
		"arch": cty.StringVal(arch), "lldp": lldpUnavailable(),
	}}
	content, remain, diags := body.PartialContent(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: "locals"}},
	})
	if diags.HasErrors() {
		return stage{Diagnostics: fromHCL(diags)}
	}
	values, bad := locals(content.Blocks, ctx)
	if bad != nil {
		return *bad
	}
	if len(values) > 0 {
		child := &hcl.EvalContext{Variables: map[string]cty.Value{"local": cty.ObjectVal(values)}}
		for name, value := range ctx.Variables {
			child.Variables[name] = value
		}
		ctx = child
	}
	var plan planBody
	if diags := gohcl.DecodeBody(remain, ctx, &plan); diags.HasErrors() {
		return stage{Diagnostics: fromHCL(diags)}
	}
	headers := []hcl.Range{}
	for _, block := range body.Blocks {
		if block.Type == "target" {
			headers = append(headers, block.TypeRange)
		}
	}
	out := rendered{DefaultTarget: plan.DefaultTarget, DNS: plan.DNS, Menu: plan.Menu, Targets: []renderedTarget{}}
	out.Locals = map[string]json.RawMessage{}
	for name, value := range values {
		// Only values JSON can carry are reported; the rest stay out (and are never compared).
		if text, err := json.Marshal(ctyjson.SimpleJSONValue{Value: value}); err == nil {
			out.Locals[name] = text
		}
	}
	for i := range plan.Targets {
		done, bad := target(&plan.Targets[i], headers[i], ctx)
		if bad != nil {
			return *bad
		}
		out.Targets = append(out.Targets, done)
	}
	return stage{OK: true, Plan: &out}
}

func answer(req request) response {
	out := response{ID: req.ID}
	file, diags := hclsyntax.ParseConfig([]byte(req.Text), req.Name, hcl.Pos{Line: 1, Column: 1, Byte: 0})
	if diags.HasErrors() {
		out.Parse = stage{Diagnostics: fromHCL(diags)}
		return out
	}
	out.Parse = stage{OK: true}
	out.Arches = map[string]stage{}
	for _, arch := range req.Arches {
		out.Arches[arch] = decode(file.Body.(*hclsyntax.Body), arch)
	}
	return out
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := bufio.NewWriter(os.Stdout)
	encoder := json.NewEncoder(out)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, "plan-oracle: bad request:", err)
			os.Exit(2)
		}
		if err := encoder.Encode(answer(req)); err != nil {
			fmt.Fprintln(os.Stderr, "plan-oracle:", err)
			os.Exit(2)
		}
		if err := out.Flush(); err != nil {
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "plan-oracle:", err)
		os.Exit(2)
	}
}
