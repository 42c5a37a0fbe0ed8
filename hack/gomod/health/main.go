// modelops-health: what kstatus and Argo CD say about Kubernetes objects, computed by their own code.
//
//	modelops-health -argocd-cm charts/argocd/argocd-cm-snippet.yaml < objects.jsonl
//
// Reads one object per line (JSON) on stdin and writes one JSON line per object on stdout:
//
//	{"kstatus": {"status": "InProgress", "message": "..."},
//	 "argocd":  {"status": "Progressing", "message": "..."}, "error": "..."}
//
// kstatus is sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, as Flux's health checks and Helm 4's
// --wait call it. Argo CD's answer is gitops-engine's health.GetResourceHealth with the resource
// overrides of util/lua, which is what Argo CD's application controller calls for each live resource
// (controller/health.go): the custom health Lua runs in Argo CD's own gopher-lua sandbox. The
// overrides come from an argocd-cm ConfigMap's `resource.customizations.health.<group_kind>` and
// `resource.customizations.useOpenLibs.<group_kind>` keys, parsed as Argo CD's settings manager
// does (util/settings convertToOverrideKey; that package itself would pull in Argo CD's clients).
// "argocd" is null when no health check applies to the object (Argo CD then leaves it out of the
// application's health); "error" is set when either library failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/argoproj/argo-cd/gitops-engine/pkg/health"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

const customizations = "resource.customizations."

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type answer struct {
	Kstatus *verdict `json:"kstatus"`
	Argocd  *verdict `json:"argocd"`
	Error   string   `json:"error,omitempty"`
}

// overrides reads the health customizations of an argocd-cm ConfigMap (YAML), keyed as Argo CD keys
// them: "<group>/<Kind>", or "<Kind>" for the core group.
func overrides(path string) (lua.ResourceHealthOverrides, error) {
	out := lua.ResourceHealthOverrides{}
	if path == "" {
		return out, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for key, value := range cm.Data {
		parts := strings.SplitN(key, ".", 4)
		if !strings.HasPrefix(key, customizations) || len(parts) < 4 {
			continue
		}
		groupKind := strings.Split(parts[3], "_")
		name := parts[3]
		if len(groupKind) == 2 {
			name = groupKind[0] + "/" + groupKind[1]
		} else if len(groupKind) != 1 || name == "" {
			return nil, fmt.Errorf("%s: key %q is not resource.customizations.<type>.<group_kind>", path, key)
		}
		override := out[name]
		switch parts[2] {
		case "health":
			override.HealthLua = value
		case "useOpenLibs":
			if override.UseOpenLibs, err = strconv.ParseBool(value); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", path, key, err)
			}
		default:
			continue // actions, ignoreDifferences, ...: not about health
		}
		out[name] = override
	}
	return out, nil
}

func judge(line []byte, checks lua.ResourceHealthOverrides) answer {
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(line); err != nil {
		return answer{Error: "not a Kubernetes object: " + err.Error()}
	}
	var out answer
	var errs []string
	if res, err := status.Compute(obj); err != nil {
		errs = append(errs, "kstatus: "+err.Error())
	} else {
		out.Kstatus = &verdict{Status: res.Status.String(), Message: res.Message}
	}
	hs, err := health.GetResourceHealth(obj, checks)
	if err != nil {
		errs = append(errs, "argocd: "+err.Error())
	}
	if hs != nil {
		out.Argocd = &verdict{Status: string(hs.Status), Message: hs.Message}
	}
	out.Error = strings.Join(errs, "; ")
	return out
}

func main() {
	cm := flag.String("argocd-cm", "", "an argocd-cm ConfigMap (YAML) with resource.customizations.health.* keys")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-argocd-cm FILE] < objects.jsonl\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	checks, err := overrides(*cm)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		line := in.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if err := out.Encode(judge(line, checks)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
