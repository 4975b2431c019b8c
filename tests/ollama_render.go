// What Ollama makes of a Modelfile and a chat request, with Go's own text/template (Ollama's template
// engine), for tests/test_modelfile.py. Standard library only (Debian's golang-go, Go 1.19; no module
// download). Ported from ollama/ollama (MIT), commit fb30760 (2026-08-21):
//   - parseModelfile: parser/parser.go ParseFile, parseRuneForState, unquote (the BOM decoder aside);
//   - render: server/routes.go ChatHandler (the Modelfile's SYSTEM is prepended when the first message
//     is not a system message), template/template.go collate, Parse (funcs, missingkey=zero, the
//     {{ .Response }} touch-up) and Execute's .Messages branch (the values a template sees).
//
// stdin:  {"modelfile": "PATH", "conversations": {"NAME": [{"role": "...", "content": "..."}]}}
// stdout: {"commands": [{"name": "...", "args": "..."}], "prompts": {"NAME": "rendered prompt"}}
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Command struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

// --- parser/parser.go -------------------------------------------------------------------------------

type state int

const (
	stateNil state = iota
	stateName
	stateValue
	stateParameter
	stateMessage
	stateComment
)

func parseModelfile(r io.Reader) ([]Command, error) {
	var cmd Command
	var curr state
	var b bytes.Buffer
	var role string
	var commands []Command
	br := bufio.NewReader(r)
	for {
		r, _, err := br.ReadRune()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
		next, r, err := parseRuneForState(r, curr)
		if err != nil {
			return nil, err
		}
		if next != curr {
			switch curr {
			case stateName:
				if !isValidCommand(b.String()) {
					return nil, fmt.Errorf("invalid command %q", b.String())
				}
				switch s := strings.ToLower(b.String()); s {
				case "from":
					cmd.Name = "model"
				case "parameter":
					next = stateParameter
				case "message":
					next = stateMessage
					fallthrough
				default:
					cmd.Name = s
				}
			case stateParameter:
				cmd.Name = b.String()
			case stateMessage:
				role = b.String()
			case stateComment, stateNil:
			case stateValue:
				s, ok := unquote(strings.TrimSpace(b.String()))
				if !ok || isSpace(r) {
					b.WriteRune(r)
					continue
				}
				if role != "" {
					s = role + ": " + s
					role = ""
				}
				cmd.Args = s
				commands = append(commands, cmd)
			}
			b.Reset()
			curr = next
		}
		if strconv.IsPrint(r) {
			b.WriteRune(r)
		}
	}
	switch curr {
	case stateComment, stateNil:
	case stateValue:
		s, ok := unquote(strings.TrimSpace(b.String()))
		if !ok {
			return nil, io.ErrUnexpectedEOF
		}
		cmd.Args = s
		commands = append(commands, cmd)
	default:
		return nil, io.ErrUnexpectedEOF
	}
	return commands, nil
}

func parseRuneForState(r rune, cs state) (state, rune, error) {
	switch cs {
	case stateNil:
		switch {
		case r == '#':
			return stateComment, 0, nil
		case isSpace(r), isNewline(r):
			return stateNil, 0, nil
		default:
			return stateName, r, nil
		}
	case stateName:
		switch {
		case isAlpha(r):
			return stateName, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, errors.New("invalid command")
		}
	case stateValue:
		switch {
		case isNewline(r):
			return stateNil, r, nil
		case isSpace(r):
			return stateNil, r, nil
		default:
			return stateValue, r, nil
		}
	case stateParameter:
		switch {
		case isAlpha(r), isNumber(r), r == '_':
			return stateParameter, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, io.ErrUnexpectedEOF
		}
	case stateMessage:
		switch {
		case isAlpha(r):
			return stateMessage, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, io.ErrUnexpectedEOF
		}
	case stateComment:
		switch {
		case isNewline(r):
			return stateNil, 0, nil
		default:
			return stateComment, 0, nil
		}
	default:
		return stateNil, 0, errors.New("")
	}
}

func unquote(s string) (string, bool) {
	if len(s) >= 3 && s[:3] == `"""` {
		if len(s) >= 6 && s[len(s)-3:] == `"""` {
			return s[3 : len(s)-3], true
		}
		return "", false
	}
	if len(s) >= 1 && s[0] == '"' {
		if len(s) >= 2 && s[len(s)-1] == '"' {
			return s[1 : len(s)-1], true
		}
		return "", false
	}
	return s, true
}

func isAlpha(r rune) bool   { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isNumber(r rune) bool  { return r >= '0' && r <= '9' }
func isSpace(r rune) bool   { return r == ' ' || r == '\t' }
func isNewline(r rune) bool { return r == '\r' || r == '\n' }

func isValidCommand(cmd string) bool {
	switch strings.ToLower(cmd) {
	case "from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires":
		return true
	}
	return false
}

// --- template/template.go ---------------------------------------------------------------------------

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string { return "any" },
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
		return names
	case *parse.TemplateNode:
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		names := identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				names = append(names, identifiers(l)...)
			}
		}
		return names
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
		return names
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

// templateMessage: the fields a template sees for each message (template.go, convertMessagesForTemplate).
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []any
	ToolName   string
	ToolCallID string
}

func render(tmplText, modelSystem string, msgs []Message) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(tmplText)
	if err != nil {
		return "", err
	}
	usesMessages := false
	for _, t := range tmpl.Templates() {
		for _, id := range identifiers(t.Root) {
			if strings.ToLower(id) == "messages" {
				usesMessages = true
			}
		}
	}
	if !usesMessages {
		return "", errors.New("the TEMPLATE does not use .Messages: Ollama would run it as a legacy prompt/response template")
	}
	// server/routes.go, ChatHandler: the Modelfile's SYSTEM when the request does not start with its own.
	if len(msgs) > 0 && msgs[0].Role != "system" && modelSystem != "" {
		msgs = append([]Message{{Role: "system", Content: modelSystem}}, msgs...)
	}
	system, collated := collate(msgs)
	messages := make([]*templateMessage, len(collated))
	for i, m := range collated {
		messages[i] = &templateMessage{Role: m.Role, Content: m.Content}
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      nil,
		"Response":   "",
		"Think":      false,
		"ThinkLevel": "",
		"IsThinkSet": false,
	})
	return b.String(), err
}

func main() {
	var input struct {
		Modelfile     string               `json:"modelfile"`
		Conversations map[string][]Message `json:"conversations"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fail(err)
	}
	f, err := os.Open(input.Modelfile)
	if err != nil {
		fail(err)
	}
	commands, err := parseModelfile(f)
	if err != nil {
		fail(fmt.Errorf("%s: %w", input.Modelfile, err))
	}
	var tmplText, system string
	for _, c := range commands {
		switch c.Name {
		case "template":
			tmplText = c.Args
		case "system":
			system = c.Args
		}
	}
	prompts := map[string]string{}
	for name, msgs := range input.Conversations {
		text, err := render(tmplText, system, msgs)
		if err != nil {
			fail(fmt.Errorf("%s: %w", name, err))
		}
		prompts[name] = text
	}
	out, _ := json.Marshal(map[string]any{"commands": commands, "prompts": prompts})
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
