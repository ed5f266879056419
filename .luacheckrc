std = "ngx_lua"
max_line_length = 100
files["lib/"] = { std = "ngx_lua" }
