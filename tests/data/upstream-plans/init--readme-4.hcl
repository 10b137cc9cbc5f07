dns = ["10.0.2.2", "1.1.1.1"]   # optional, replaces DHCP DNS
