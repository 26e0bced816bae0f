// flowattr-cni as the container runtime runs it: a static shim that hands the CNI request to the
// Python plugin (exporter/cni.py, run by the command in the network config's "exec") and, if that
// cannot run or fails, answers as the plugin would have on a failure: ADD passes prevResult through
// unchanged, every other command succeeds. A pod's network set-up never fails because of flowattr,
// even when the agent's files are gone from the host.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// The Python plugin answers within a second or two (an API call has its own shorter timeout);
// past this the pod's set-up goes on without its entry.
const timeout = 10 * time.Second

var supported = []string{"0.4.0", "1.0.0", "1.1.0"}

type netConf struct {
	CNIVersion string            `json:"cniVersion"`
	Exec       []string          `json:"exec"`
	Env        map[string]string `json:"env"`
	PrevResult json.RawMessage   `json:"prevResult"`
}

func main() {
	stdin, _ := io.ReadAll(os.Stdin)
	command := os.Getenv("CNI_COMMAND")
	if command == "VERSION" {
		out, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "supportedVersions": supported})
		os.Stdout.Write(out)
		return
	}
	var conf netConf
	if err := json.Unmarshal(stdin, &conf); err != nil {
		// Not ours to judge: without a readable config there is nothing to pass through either.
		fail(fmt.Sprintf("unreadable network config: %v", err))
	}
	out, err := run(conf.Exec, conf.Env, stdin)
	if err == nil {
		os.Stdout.Write(out)
		return
	}
	if _, ran := err.(*exec.ExitError); ran && command == "CHECK" && len(out) > 0 {
		// CHECK's answer is the plugin's verdict on its own entries: relay it.
		os.Stdout.Write(out)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "flowattr-cni: %s skipped: %v\n", command, err)
	if command == "ADD" {
		os.Stdout.Write(passThrough(conf))
	}
}

func run(command []string, env map[string]string, stdin []byte) ([]byte, error) {
	if len(command) == 0 {
		return nil, fmt.Errorf("no \"exec\" in the network config")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Env = os.Environ()
	for name, value := range env {
		cmd.Env = append(cmd.Env, name+"="+value)
	}
	cmd.Stderr = os.Stderr
	return cmd.Output()
}

func passThrough(conf netConf) []byte {
	if len(conf.PrevResult) > 0 {
		return conf.PrevResult
	}
	out, _ := json.Marshal(map[string]string{"cniVersion": conf.CNIVersion})
	return out
}

func fail(msg string) {
	out, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "code": 100, "msg": msg})
	os.Stdout.Write(out)
	os.Exit(1)
}
