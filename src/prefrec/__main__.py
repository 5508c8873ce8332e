from prefrec.cli import main

main()
