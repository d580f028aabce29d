"""pilefw: the ESP32 port of pilegate (MicroPython); modules here do the device's I/O."""
