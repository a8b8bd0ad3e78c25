// Renders an Ollama TEMPLATE with Go's text/template, the engine Ollama itself uses, for tests/test_gguf.py.
// stdin: {"template": "...", "values": [{"Prompt": "...", "System": "..."}, ...]}; stdout: a JSON list of renderings.
// The data has the fields of Ollama's legacy template data (.System, .Prompt, .Response); .Response is empty,
// as when Ollama renders the prompt it sends to the model.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Data struct {
	System, Prompt, Response string
}

func main() {
	var in struct {
		Template string
		Values   []Data
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	parsed := template.Must(template.New("modelfile").Parse(in.Template))
	out := []string{}
	for _, values := range in.Values {
		var rendered strings.Builder
		if err := parsed.Execute(&rendered, values); err != nil {
			panic(err)
		}
		out = append(out, rendered.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
