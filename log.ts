// One line per event on stderr for both processes: time, component, level, message, then key=value fields with
// JSON-quoted values (so a value can never forge another field). Callers never pass secrets: no token, no query
// string, no request body, no command text.

export type Log = (level: "info" | "warn" | "error", message: string, fields?: Record<string, unknown>) => void;

export function logger(component: "server" | "agent"): Log {
  return (level, message, fields = {}) => {
    const parts = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    console.error([new Date().toISOString(), component, level, message, ...parts].join(" "));
  };
}
